"""Weight-sharing supernet training for whittle: masked sub-networks sampled per step, distilled from the dense model."""

"""edgejpq: joint pruning + mixed-precision search that emits bit-exact C for microcontrollers."""

__version__ = "0.1.0"

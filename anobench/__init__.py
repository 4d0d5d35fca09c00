"""anobench: a benchmark harness for unsupervised image anomaly detection on MVTec AD."""

__version__ = "0.1.0"

"""anobench: a benchmark harness for unsupervised image anomaly detection on MVTec AD."""

__version__ = "0.1.0"

from anobench.config import register_resolvers as _register_resolvers

_register_resolvers()  # before any config is composed: conf/train.yaml reads the protocol through it

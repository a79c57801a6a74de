"""recsys-mtl: multi-task ranking on TorchRec, from Parquet to a served `POST /score`."""

__version__ = "0.1.0"

"""Each indexed photo's decoder input (the encoder's features, float16, as the feature cache stores them), in
one flat file per model beside the database: search reranks by the decoder, and must not run the encoder
again on every query.

Rows are appended before the database transaction that refers to them commits, so a killed run leaves at most
rows nobody refers to at the end; the next run cuts them off (`open(..., rows=database.feature_rows(model))`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from captioner.errors import CaptionerError


class FeatureFile:
    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.path = path
        self.shape = tuple(shape)  # of one row: (C,) pooled or (L, C) grid
        self.row_bytes = int(np.prod(self.shape)) * 2
        self._map: np.memmap | None = None
        self._mapped_rows = 0

    @classmethod
    def open(cls, path: Path, shape: tuple[int, ...], rows: int) -> FeatureFile:
        """The file with its first `rows` rows kept (the rest cut off), made if absent."""
        features = cls(path, shape)
        with path.open("ab") as file:
            size = file.tell()
            if size < rows * features.row_bytes:
                raise CaptionerError(f"{path} holds {size // features.row_bytes} rows of features but the library "
                                     f"refers to {rows}; the file was cut short: index the library again with "
                                     "--reindex")
            if size != rows * features.row_bytes:
                file.truncate(rows * features.row_bytes)
        return features

    @property
    def rows(self) -> int:
        try:
            return self.path.stat().st_size // self.row_bytes
        except FileNotFoundError:
            raise CaptionerError(f"{self.path} is gone: index the library again with --reindex") from None

    def append(self, features: torch.Tensor) -> int:
        """Write (B, *shape) features at the end, durable before returning; the first new row's number."""
        if tuple(features.shape[1:]) != self.shape:
            raise ValueError(f"features of shape {tuple(features.shape[1:])}, the file holds {self.shape}")
        data = features.detach().to("cpu", torch.float16).contiguous().numpy().tobytes()
        try:
            with self.path.open("ab") as file:
                first = file.tell() // self.row_bytes
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except OSError as error:  # a full disk: the rows nobody refers to are cut off by the next run
            raise CaptionerError(f"cannot write {self.path}: {error.strerror}") from error
        return first

    def read(self, rows: list[int]) -> torch.Tensor:
        """(len(rows), *shape) float16 features of these rows."""
        needed = max(rows) + 1 if rows else 0
        if self._map is None or needed > self._mapped_rows:
            count = self.rows
            if needed > count:
                raise CaptionerError(f"{self.path} holds {count} rows of features, row {needed - 1} was asked for")
            self._map = np.memmap(self.path, dtype=np.float16, mode="r", shape=(count, *self.shape))
            self._mapped_rows = count
        return torch.from_numpy(np.ascontiguousarray(self._map[np.asarray(rows, dtype=np.int64)]))

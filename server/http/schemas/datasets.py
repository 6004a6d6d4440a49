"""Schemas of the datasets API: an uploaded file's record and the list of them."""

from __future__ import annotations

from typing import Any

from ...vocabulary import DATASET_ID_PATTERN, DATASET_NAME_PATTERN
from .base import NON_NEGATIVE_INT, SHA256_PATTERN, paged, ref

DATASET_ID = {"type": "string", "pattern": DATASET_ID_PATTERN, "description": "A dataset's id"}
DATASET_NAME = {
    "type": "string",
    "pattern": DATASET_NAME_PATTERN,
    "description": "A label the agent chooses for the dataset (not unique)",
}

DATASETS: dict[str, dict[str, Any]] = {
    "DatasetId": DATASET_ID,
    "Dataset": {
        "type": "object",
        "required": [
            "datasetId",
            "agentId",
            "name",
            "sha256",
            "format",
            "sizeBytes",
            "numRows",
            "arrays",
            "createdAt",
        ],
        "additionalProperties": False,
        "properties": {
            "datasetId": ref("DatasetId"),
            "agentId": ref("AgentId"),
            "name": DATASET_NAME,
            "sha256": {"type": "string", "pattern": SHA256_PATTERN, "description": "Of the uploaded bytes"},
            "format": {"enum": ["npz", "safetensors"]},
            "sizeBytes": NON_NEGATIVE_INT,
            "numRows": {**NON_NEGATIVE_INT, "description": "The arrays' common first dimension"},
            "arrays": {
                "type": "object",
                "description": "Each array's shape and numpy dtype, by name",
                "additionalProperties": {
                    "type": "object",
                    "required": ["shape", "dtype"],
                    "additionalProperties": False,
                    "properties": {
                        "shape": {"type": "array", "items": NON_NEGATIVE_INT},
                        "dtype": {"type": "string"},
                    },
                },
            },
            "createdAt": ref("TimestampMs"),
        },
    },
    "DatasetList": paged("datasets", "Dataset"),
}

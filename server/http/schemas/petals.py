"""Schemas of the training API: models and their round policies, jobs, cycles, the shared
model, predictions, hold-out sets and rollbacks."""

from __future__ import annotations

from typing import Any

from aggregation.strategies import METHODS as AGGREGATION_METHODS

from ... import vocabulary as words
from ...training.federation import OPTIMIZERS as SERVER_OPTIMIZERS
from .base import NEXT_CURSOR, NON_NEGATIVE_INT, SHA256_PATTERN, nullable, paged, ref
from .sandboxes import _CPU, _MEMORY, _NULLABLE_INT

CYCLE_STATUSES = [str(s) for s in words.CycleStatus]
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_ENTRYPOINT = {
    "description": "The command run in the sandbox: an argv list, or one string split as a shell would",
    "anyOf": [
        {"type": "string", "minLength": 1, "maxLength": 4096},
        {
            "type": "array",
            "minItems": 1,
            "maxItems": 64,
            "items": {"type": "string", "minLength": 1, "maxLength": 4096},
        },
    ],
}
_MODEL_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "inputDim": {"type": "integer", "minimum": 1, "maximum": 65536},
        "numClasses": {"type": "integer", "minimum": 1, "maximum": 10000},
        "hidden": {
            "type": "array",
            "maxItems": 16,
            "items": {"type": "integer", "minimum": 1, "maximum": 65536},
        },
    },
}
_ROUND_POLICY = {
    "type": "object",
    "additionalProperties": False,
    "description": "When a round of this model closes; fields left out take the service's defaults",
    "properties": {
        "minClients": {
            "anyOf": [{"type": "integer", "minimum": 1, "maximum": words.MIN_CLIENTS_MAX}, {"type": "null"}],
            "description": "Fewest completed cycles a round closes with (null: 2 once two agents train the model)",
        },
        "roundWindowSeconds": {
            "type": "number",
            "minimum": 0,
            "maximum": words.ROUND_SECONDS_MAX,
            "description": "How long a round stays open for participants after its first enrolment",
        },
        "aggregationThreshold": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "Share of the clients enrolled when the window closed that must complete",
        },
        "roundDeadlineSeconds": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": words.ROUND_SECONDS_MAX,
            "description": "A round closes (or expires, below minClients) this long after it opened",
        },
        "allowPartial": {
            "type": "boolean",
            "description": "At the deadline, close below minClients rather than expire",
        },
        "aggregation": {
            "type": "object",
            "additionalProperties": False,
            "description": "How the round's kept updates are combined (default: the service's method)",
            "properties": {
                "method": {"enum": list(AGGREGATION_METHODS)},
                "biasMethod": {
                    "anyOf": [{"enum": list(AGGREGATION_METHODS)}, {"type": "null"}],
                    "description": "Method for tensors whose name ends in bias (null: method)",
                },
                "beta": {**_NULLABLE_NUMBER, "description": "trimmed_mean: share cut from each end, 0..0.5"},
                "f": {**_NULLABLE_INT, "description": "krum, multi_krum: updates assumed malicious"},
                "m": {**_NULLABLE_INT, "description": "multi_krum: updates kept (default n - f)"},
            },
        },
        "serverOptimizer": {
            "type": "object",
            "additionalProperties": False,
            "description": "How the aggregate moves the model: plain, fedavgm (momentum) or fedadam",
            "properties": {
                "name": {"enum": list(SERVER_OPTIMIZERS)},
                "learningRate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
                "momentum": {"type": "number", "minimum": 0, "maximum": 1},
                "beta1": {"type": "number", "minimum": 0, "maximum": 1},
                "beta2": {"type": "number", "minimum": 0, "maximum": 1},
                "tau": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
            },
        },
        "screening": {
            "type": "object",
            "additionalProperties": False,
            "description": "Each update checked before aggregation; one that fails is left out of its round",
            "properties": {
                "enabled": {"type": "boolean"},
                "maxNorm": {**_NULLABLE_NUMBER, "description": "Bound on each update's L2 norm (null: none)"},
                "normRatio": {
                    **_NULLABLE_NUMBER,
                    "description": "Bound as a multiple of the round's median norm (null: none)",
                },
                "minCosine": {
                    **_NULLABLE_NUMBER,
                    "description": "Least cosine similarity to the round's coordinate median",
                },
                "minUpdates": {
                    "type": "integer",
                    "minimum": 2,
                    "maximum": 1000,
                    "description": "Finite updates the relative checks need",
                },
            },
        },
        "maxConsecutiveExclusions": {
            **_NULLABLE_INT,
            "description": "After this many excluded updates in a row an agent's jobs are refused (null: never)",
        },
        "privacy": {
            "anyOf": [
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["targetEpsilon", "plannedRounds", "clipNorm"],
                    "properties": {
                        "targetEpsilon": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                        "delta": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                        "plannedRounds": {"type": "integer", "minimum": 1, "maximum": 100000},
                        "clipNorm": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e12},
                        "noiseMultiplier": {"type": "number", "description": "Worked out; ignored on input"},
                    },
                },
                {"type": "null"},
            ],
            "description": "Client-level differential privacy: clipping, Gaussian noise, a budget",
        },
    },
}

_TRAINING_PROPERTIES = {
    "agentId": ref("AgentId"),
    "dataBatch": {
        "type": "array",
        "minItems": 1,
        "maxItems": 100000,
        "items": {
            "type": "object",
            "required": ["x", "y"],
            "additionalProperties": False,
            "properties": {
                "x": {"type": "array", "minItems": 1, "maxItems": 65536, "items": {"type": "number"}},
                "y": {"type": "number"},
            },
        },
    },
    "modelType": ref("ModelName"),
    "trainingParams": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "learningRate": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
            "batchSize": {"type": "integer", "minimum": 1, "maximum": 65536},
            "epochs": {"type": "integer", "minimum": 1, "maximum": words.EPOCHS_MAX},
        },
    },
    "modelConfig": _MODEL_CONFIG,
    "resourceCaps": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "cpu": _CPU,
            "memory": _MEMORY,
            "gpu": {
                "type": "integer",
                "minimum": 0,
                "maximum": words.GPU_COUNT_MAX,
                "description": "GPUs the program sees",
            },
        },
    },
    "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
    "hyperparameters": {
        "type": "object",
        "maxProperties": 64,
        "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"},
        "additionalProperties": {"description": "any JSON value"},
        "description": "Free-form values for the program, merged over the model's default hyperparameters "
        "into /job.json",
    },
}


PETALS: dict[str, dict[str, Any]] = {
    "PetalTrainingRequest": {
        "type": "object",
        "required": ["modelType"],
        "additionalProperties": False,
        "description": "Exactly one of dataBatch or datasetId (a dataset of the caller's, bound read-only at /data)",
        "properties": {**_TRAINING_PROPERTIES, "datasetId": ref("DatasetId")},
    },
    "RoundPolicy": _ROUND_POLICY,
    "ModelProgramSpec": {
        "type": "object",
        "required": ["modelType", "entrypoint"],
        "additionalProperties": False,
        "description": "The `spec` part of a multipart model registration",
        "properties": {
            "modelType": {
                "type": "string",
                "pattern": f"^{words.MODEL_LABEL}$",
                "description": "A plain name, no family",
            },
            "roundPolicy": ref("RoundPolicy"),
            "entrypoint": _ENTRYPOINT,
            "evaluateEntrypoint": _ENTRYPOINT,
            "hyperparameters": {"type": "object", "maxProperties": 256},
            "warmProfile": {
                "enum": ["numpy", "torch"],
                "description": "The warm pool profile its cycles take (WARM_POOL): torch for a PyTorch "
                "program, numpy (the default) otherwise",
            },
        },
    },
    "ModelUpload": {
        "type": "object",
        "required": ["spec", "program", "parameters"],
        "description": "multipart/form-data parts; together at most PETALS_MODEL_UPLOAD_MAX_BYTES",
        "properties": {
            "spec": ref("ModelProgramSpec"),
            "program": {"type": "string", "format": "binary", "description": "A .py, .tar.gz or .zip"},
            "parameters": {
                "type": "string",
                "format": "binary",
                "description": "version 0, .safetensors, float32",
            },
            "onnx": {
                "type": "string",
                "format": "binary",
                "description": "An inference graph whose initializers carry the tensors' names",
            },
        },
    },
    "ModelCreateRequest": {
        "type": "object",
        "required": ["modelType", "modelConfig"],
        "additionalProperties": False,
        "properties": {
            "modelType": ref("ModelName"),
            "modelConfig": _MODEL_CONFIG,
            "roundPolicy": ref("RoundPolicy"),
        },
    },
    "Model": {
        "type": "object",
        "required": ["modelType", "signature", "currentVersion", "roundPolicy", "createdBy"],
        "additionalProperties": False,
        "properties": {
            "modelType": ref("ModelName"),
            "signature": {
                "type": ["object", "null"],
                "description": "A built-in family's; null with a program",
            },
            "program": {
                "type": "object",
                "description": "A model with its own program: its hashes and entrypoints",
            },
            "currentVersion": NON_NEGATIVE_INT,
            "roundPolicy": {
                **_ROUND_POLICY,
                "required": list(_ROUND_POLICY["properties"]),
                "description": "The policy in force, defaults filled in",
            },
            "createdBy": nullable(ref("AgentId")),
            "deleted": {"const": True},
        },
    },
    "ModelList": paged("models", "Model"),
    "TrainAccepted": {
        "type": "object",
        "required": ["cycleId", "status", "baseVersion"],
        "additionalProperties": False,
        "properties": {
            "cycleId": ref("CycleId"),
            "status": {"enum": ["queued"]},
            "baseVersion": NON_NEGATIVE_INT,
        },
    },
    "CycleStatus": {
        "type": "object",
        "required": ["cycleId", "agentId", "modelType", "status", "attempts", "baseVersion", "progress"],
        "properties": {
            "cycleId": ref("CycleId"),
            "agentId": ref("AgentId"),
            "modelType": ref("ModelName"),
            "status": {"enum": CYCLE_STATUSES},
            "attempts": NON_NEGATIVE_INT,
            "sandboxId": {"anyOf": [ref("SandboxId"), {"type": "null"}]},
            "node": {"type": "string", "description": "The Ray node of its latest attempt (executor ray)"},
            "baseVersion": NON_NEGATIVE_INT,
            "resultVersion": _NULLABLE_INT,
            "progress": {"type": "object"},
            "result": {"type": "object"},
            "error": {"type": "object"},
            "logs": {
                "type": "string",
                "description": "The program's stdout and stderr (progress lines left out), their tails kept",
            },
        },
    },
    "SharedModel": {
        "type": "object",
        "required": ["modelType", "version", "currentVersion", "signature", "metadata", "parameters"],
        "properties": {
            "modelType": ref("ModelName"),
            "version": NON_NEGATIVE_INT,
            "currentVersion": NON_NEGATIVE_INT,
            "signature": {"type": ["object", "null"]},
            "metadata": {"type": "object"},
            "parameters": {"type": "object"},
        },
    },
    "ModelEvaluation": {
        "type": "object",
        "required": ["modelType", "version", "source", "samples", "loss", "accuracy", "lossKind"],
        "additionalProperties": False,
        "properties": {
            "modelType": ref("ModelName"),
            "version": NON_NEGATIVE_INT,
            "source": {"const": "held-out", "description": "Where the figures come from"},
            "samples": NON_NEGATIVE_INT,
            "loss": {"type": "number", "description": "Mean loss over the hold-out set (lossKind)"},
            "accuracy": {
                "anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}],
                "description": "Share classified right (null for linear models)",
            },
            "lossKind": {"enum": ["mse", "binary_cross_entropy", "cross_entropy"]},
        },
    },
    "PredictRequest": {
        "type": "object",
        "required": ["modelType", "inputs"],
        "additionalProperties": False,
        "properties": {
            "modelType": ref("ModelName"),
            "version": NON_NEGATIVE_INT,
            "inputs": {
                "type": "array",
                "minItems": 1,
                "maxItems": 10000,
                "items": {"type": "array", "minItems": 1, "maxItems": 65536, "items": {"type": "number"}},
            },
        },
    },
    "PredictResult": {
        "type": "object",
        "required": ["modelType", "version", "outputs", "provider"],
        "additionalProperties": False,
        "properties": {
            "modelType": ref("ModelName"),
            "version": NON_NEGATIVE_INT,
            "outputs": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "provider": {"type": "string"},
        },
    },
    "ValidationSetRequest": {
        "type": "object",
        "required": ["modelType", "dataBatch"],
        "additionalProperties": False,
        "properties": {"modelType": ref("ModelName"), "dataBatch": _TRAINING_PROPERTIES["dataBatch"]},
    },
    "ValidationSetRegistered": {
        "type": "object",
        "required": ["modelType", "samples"],
        "additionalProperties": False,
        "properties": {"modelType": ref("ModelName"), "samples": NON_NEGATIVE_INT},
    },
    "RollbackRequest": {
        "type": "object",
        "required": ["modelType", "version"],
        "additionalProperties": False,
        "properties": {"modelType": ref("ModelName"), "version": NON_NEGATIVE_INT},
    },
    "RollbackResult": {
        "type": "object",
        "required": ["modelType", "currentVersion", "sha256"],
        "additionalProperties": False,
        "properties": {
            "modelType": ref("ModelName"),
            "currentVersion": NON_NEGATIVE_INT,
            "sha256": {"type": "string", "pattern": SHA256_PATTERN},
        },
    },
    "ModelVersions": {
        "type": "object",
        "required": ["modelType", "currentVersion", "holdoutRegistered", "versions", "count", "nextCursor"],
        "additionalProperties": False,
        "properties": {
            "modelType": ref("ModelName"),
            "currentVersion": NON_NEGATIVE_INT,
            "holdoutRegistered": {
                "type": "boolean",
                "description": "Whether a hold-out set is registered: /v1/petals/model/shared/evaluation answers",
            },
            "versions": {"type": "array", "items": {"type": "object"}},
            "count": NON_NEGATIVE_INT,
            "nextCursor": NEXT_CURSOR,
        },
    },
}

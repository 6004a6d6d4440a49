"""`train`: submit a training job from a dataset file (uploaded first) or a JSON job file, and
optionally follow its cycle to the end (`--watch`)."""

from __future__ import annotations

from pathlib import Path

import click

from .client import EXIT_USAGE, CtlError, json_object_file
from .context import Ctl, command, seconds_option
from .cycles import follow
from .datasets import upload


def _job_file(path: Path) -> dict:
    return json_object_file(path, "a PetalTrainingRequest")


def _set(job: dict, section: str, key: str, value) -> None:
    if value is not None:
        job.setdefault(section, {})[key] = value


@command(name="train")
@click.argument("model", required=False)
@click.option("--dataset", "dataset_path", type=click.Path(dir_okay=False, path_type=Path),
              help="An .npz or .safetensors file: uploaded (POST /v1/datasets), then trained on.")  # fmt: skip
@click.option("--job", "job_path", type=click.Path(dir_okay=False, path_type=Path),
              help="A JSON job (a PetalTrainingRequest: modelType, dataBatch or datasetId, ...).")  # fmt: skip
@click.option("--agent", "agent_id", help="The agent the job is for (the admin token must name one).")
@click.option("--epochs", type=click.IntRange(1), help="trainingParams.epochs")
@click.option("--batch-size", type=click.IntRange(1), help="trainingParams.batchSize")
@click.option("--learning-rate", type=click.FloatRange(0, min_open=True), help="trainingParams.learningRate")
@click.option("--cpu", type=click.FloatRange(0, min_open=True), help="resourceCaps.cpu (cores)")
@click.option("--memory", type=click.IntRange(1), help="resourceCaps.memory (MB)")
@click.option("--seed", type=click.IntRange(0), help="The seed that makes the cycle's training repeatable.")
@click.option("--watch", is_flag=True, help="Follow the cycle to its end, as `cycles watch` does.")
@seconds_option("--interval", "interval_s", 0.5, "With --watch: seconds between two looks.", 0.05, 60)
@seconds_option("--wait", "wait_s", 3600.0, "With --watch: give up after this many seconds (exit 1).")
def train(ctl: Ctl, model: str | None, dataset_path: Path | None, job_path: Path | None, agent_id: str | None,
          epochs: int | None, batch_size: int | None, learning_rate: float | None, cpu: float | None,
          memory: int | None, seed: int | None, watch: bool, interval_s: float, wait_s: float) -> None:  # fmt: skip
    """Submit a training job for MODEL and print its cycle id.

    The data is a dataset file (--dataset, uploaded first) or the dataBatch or datasetId of a
    JSON job (--job); options override the job's fields. With --watch, exit 0 when the cycle
    completed, 1 when it failed."""
    job = _job_file(job_path) if job_path is not None else {}
    if model is not None:
        job["modelType"] = model
    if agent_id is not None:
        job["agentId"] = agent_id
    if "modelType" not in job:
        raise CtlError("name the model: wondercraft-ctl train MODEL (or modelType in --job)", EXIT_USAGE)
    if dataset_path is not None:
        dataset = upload(ctl, dataset_path, None, job.get("agentId"))
        job.pop("dataBatch", None)
        job["datasetId"] = dataset["datasetId"]
    if "dataBatch" not in job and "datasetId" not in job:
        raise CtlError("no data: give --dataset FILE, or a --job with dataBatch or datasetId", EXIT_USAGE)
    for key, value in (("epochs", epochs), ("batchSize", batch_size), ("learningRate", learning_rate)):
        _set(job, "trainingParams", key, value)
    _set(job, "resourceCaps", "cpu", cpu)
    _set(job, "resourceCaps", "memory", memory)
    if seed is not None:
        job["seed"] = seed
    accepted = ctl.client.call("POST", "/v1/petals/train", job)
    if not watch:
        ctl.out(
            accepted, lambda a: click.echo(f"{a['cycleId']} {a['status']} (base version {a['baseVersion']})")
        )
        return
    if not ctl.json:
        click.echo(f"{accepted['cycleId']} {accepted['status']} (base version {accepted['baseVersion']})")
    follow(ctl, accepted["cycleId"], interval_s, wait_s)

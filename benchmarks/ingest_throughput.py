"""Ingest throughput: images/s and peak RSS for a zip of N demo images at S px.

Runs the real ingest code path (archive listing, safe extraction, decode + hash +
de-dup + store, splits) against SQLite and a local object directory, in this process,
so the figure is the worker's own cost without broker latency.

    .venv/bin/python benchmarks/ingest_throughput.py --images 5000 --size 256
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

from shared.db import make_engine, make_session_factory
from shared.demo_dataset import generate_demo_samples
from shared.imaging import encode_png
from shared.ingest.service import run_ingest
from shared.jobs import JobContext, create_job
from shared.migrate import upgrade
from shared.models import Dataset, Tenant
from shared.settings import Settings
from shared.storage import make_store


def build_zip(path: Path, images: int, size: int) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        rows = ["path,label,mask,group"]
        for sample in generate_demo_samples(total=images, image_size=size, seed=0):
            archive.writestr(f"images/{sample.image_id}.png", encode_png(sample.image))
            archive.writestr(f"masks/{sample.image_id}.png", encode_png(sample.mask))
            rows.append(
                f"images/{sample.image_id}.png,{sample.label},masks/{sample.image_id}.png,{sample.group}"
            )
        archive.writestr("manifest.csv", "\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(data_dir=root / "data", ingest_chunk_size=200)
        engine = make_engine(settings)
        upgrade(engine)
        factory = make_session_factory(engine)
        store = make_store(settings)

        started = time.perf_counter()
        archive = root / "upload.zip"
        build_zip(archive, args.images, args.size)
        build_s = time.perf_counter() - started
        store.put_stream("uploads/bench.zip", archive.open("rb"), archive.stat().st_size)

        dataset_id = uuid.uuid4()
        with factory.begin() as session:
            tenant = Tenant(name="bench")
            session.add(tenant)
            session.flush()
            session.add(Dataset(id=dataset_id, tenant_id=tenant.id, name="bench", format="csv"))
            job = create_job(
                session,
                tenant_id=tenant.id,
                kind="ingest",
                task_name="tailsynth.ingest_dataset",
                params={"dataset_id": str(dataset_id), "source_key": "uploads/bench.zip"},
            )
            ctx = JobContext(job_id=job.id, factory=factory, params=dict(job.params))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        result = run_ingest(ctx, factory, store, settings)
        ingest_s = time.perf_counter() - started
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(  # noqa: T201
            json.dumps(
                {
                    "images": result["images"],
                    "image_px": args.size,
                    "archive_mb": round(archive.stat().st_size / 2**20, 1),
                    "ingest_seconds": round(ingest_s, 1),
                    "images_per_s": round(result["images"] / ingest_s, 1),
                    "peak_rss_mb": round(peak_rss_mb, 1),
                    "rss_before_ingest_mb": round(rss_before / 1024, 1),
                    "archive_build_seconds": round(build_s, 1),
                }
            )
        )


if __name__ == "__main__":
    main()

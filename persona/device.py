"""The compute device every stage shares: which one, how much memory it has, giving memory back."""

from __future__ import annotations


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_memory() -> tuple[float | None, str | None]:
    """Total memory of CUDA device 0 in GiB and its name, or (None, None) without one."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    props = torch.cuda.get_device_properties(0)
    return props.total_memory / 2**30, props.name


def fits(planned_gb: float, have_gib: float) -> bool:
    """Whether a recipe planned for a card sold as `planned_gb` runs on one that reports `have_gib`:
    cards report a little less than they are sold as (a 12 GB card ~11.7 GiB, an 80 GB one ~79.2)."""
    return planned_gb * 0.92 <= have_gib


def largest_fitting(planned_gb: list[float], have_gib: float) -> float | None:
    fitting = [gb for gb in sorted(planned_gb) if fits(gb, have_gib)]
    return fitting[-1] if fitting else None


def free_memory() -> None:
    """Return freed memory to the device after the caller dropped its last reference to a model."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

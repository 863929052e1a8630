"""Public home of the submitit/Slurm settings mixin: ``from exca.slurm import SubmititMixin``."""

from .infra.resources import SubmititMixin

__all__ = ["SubmititMixin"]

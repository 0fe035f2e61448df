"""Output paths a command writes (--json, --output): refused unless a plain file of the user's."""
import os

from trainer.app import sweep
from trainer.app.console import CommandError
from trainer.run import checkpoints


def is_run_file(name: str) -> bool:
    """A file of a model folder that a run writes or reads (checkpoints, records, lock)."""
    return (name.startswith("model-") and name.endswith(".ckpt")) or \
        name in (checkpoints.INTERRUPTED, checkpoints.LOCK, sweep.SWEEP_CSV) + checkpoints.RECORDS


def check_output(path: str, option: str, modeldir: str, inputs) -> None:
    """Refuse an output path that is not a plain file of the user's to replace: a link, a folder,
    a device or pipe, a file of the run in modeldir, or one of the command's inputs (paths, present
    or not). Links and ./ are resolved, so another name for the same file is caught too."""
    if os.path.islink(path):
        raise CommandError(f"{option} {path} is a symbolic link, which is not replaced; name a "
                           f"file that is not a link.")
    if os.path.isdir(path):
        raise CommandError(f"{option} {path} is a folder; name a file, for example "
                           f"{os.path.join(path, checkpoints.PREDICTIONS)}.")
    if os.path.exists(path) and not os.path.isfile(path):
        raise CommandError(f"{option} {path} is not a regular file (a device, pipe or socket); "
                           f"name a file to write.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(f"{option} {path}: folder {folder} does not exist; create it or choose "
                           f"another path.")
    real = os.path.realpath(path)
    if os.path.dirname(real) == os.path.realpath(modeldir) and is_run_file(os.path.basename(real)):
        raise CommandError(f"{option} {path} would replace {os.path.basename(real)} of the run in "
                           f"{modeldir}; choose another path.")
    for source in inputs:
        if real == os.path.realpath(source) or (
                os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source)):
            raise CommandError(f"{option} {path} is {source}, which this command reads; choose "
                               f"another path.")

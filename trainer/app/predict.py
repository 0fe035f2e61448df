"""--mode predict: a checkpoint's class probabilities for a private image set (an .npy, or PNG/JPEG
files), written as an (N, classes) .npy or, for a .csv, as the hand-in's id,label rows (an .npy
set) or file,label,class_name,probability rows (image files). A folder of images goes to a .csv
only: its unreadable files are skipped, and an .npy's bare rows would not say which is which."""
import csv
import io
import os

import numpy as np

import DataReader
import Model
from configure import Config
from trainer.app import checkpoint_config
from trainer.app.console import CommandError, announce
from trainer.app.outputs import check_output
from trainer.data.class_names import names_for
from trainer.run import checkpoints
from trainer.storage import atomic


def image_rows_csv(files: list, probabilities: np.ndarray, names) -> str:
    """The text of a CSV of file,label,class_name,probability rows, one per image file: the
    predicted class, its name (``names[label]``, or the number when names is None) and its
    probability to 4 decimals. The csv module quotes file names holding commas or quotes."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "label", "class_name", "probability"])
    for file, p in zip(files, probabilities):
        label = int(p.argmax())
        writer.writerow([file, label, names[label] if names else str(label), f"{p[label]:.4f}"])
    return buffer.getvalue()


def write_predictions(output: str, probabilities: np.ndarray, source: str, files=None,
                      names=None) -> None:
    """Write (N, classes) probabilities to output: a .csv gets the predicted class per image
    (id,label; with ``files``, the images' file names, file,label,class_name,probability with the
    class ``names``), anything else the array as .npy; ``source`` names the checkpoint in the
    message."""
    if files is not None and output.lower().endswith(".csv"):
        atomic.write_text(output, image_rows_csv(files, probabilities, names),
                          checkpoints.CheckpointError, flag="--output")
        print(f"wrote {output}: the predicted class of {len(files)} images from {source}")
        return
    if output.lower().endswith(".csv"):  # the hand-in format: a predicted class per image
        labels = probabilities.argmax(axis=1)
        text = "id,label\n" + "".join(f"{i},{int(c)}\n" for i, c in enumerate(labels))
        atomic.write_text(output, text, checkpoints.CheckpointError, flag="--output")
        print(f"wrote {output}: the predicted class of {len(labels)} images from {source}")
        return
    atomic.write(output, probabilities, lambda a, f: np.save(f, a, allow_pickle=False),
                 checkpoints.CheckpointError, flag="--output")
    order = "" if files is None else f" (the row of {files[0]})" if len(files) == 1 else \
        " (rows: the readable image files, sorted by name)"
    print(f"wrote {output}: {probabilities.shape[0]} x {probabilities.shape[1]} probabilities "
          f"from {source}{order}")


def check_rows_named(private: str, output: str) -> None:
    """Refuse an .npy output for a folder of images: its rows would name no file, and a skipped
    unreadable file would move every later row up unseen."""
    if os.path.isdir(private) and not output.lower().endswith(".csv"):
        suggested = os.path.splitext(output)[0] + ".csv"
        raise CommandError(f"--private_data {private} is a folder of images, whose unreadable "
                           f"files are skipped, so the bare rows of an .npy --output ({output}) "
                           f"would not say which file each row is; pass --output a .csv file, "
                           f"such as {suggested}, for file,label,class_name,probability rows.")


def predict_run(config: Config, number, private: str, output: str, explicit) -> None:
    """Predict the images of ``private`` (an .npy, a PNG/JPEG file or a folder of them) with
    checkpoint ``number`` (default: the newest) and write them to ``output``. ``explicit``: the
    configuration flags the command line gave. Run on rank 0 only."""
    number = number if number is not None else checkpoint_config.newest(config)
    source = checkpoints.find_checkpoint(config.modeldir, number)
    # Say what is wrong with --output before spending time on the predictions.
    check_output(output, "--output", config.modeldir,
                 [private, source] + DataReader.private_files(private)
                 + DataReader.data_files(config.data_dir))
    check_rows_named(private, output)
    config, trained = checkpoint_config.config_from_checkpoint(config, explicit, number)
    announce(config, trained_with=trained)
    model = Model.MyModel(config)
    x, files = DataReader.load_private_images(private)
    model.load(number)
    names = names_for(config.dataset, config.label_mode, config.num_classes)
    write_predictions(output, model.predict_prob(x), os.path.basename(source), files, names)

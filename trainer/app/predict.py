"""--mode predict: a checkpoint's class probabilities for a private image set, written as an
(N, classes) .npy or, for a .csv, as the hand-in's id,label rows."""
import os

import numpy as np

import DataReader
import Model
from configure import Config
from trainer.app import checkpoint_config
from trainer.app.console import announce
from trainer.app.outputs import check_output
from trainer.run import checkpoints
from trainer.storage import atomic


def write_predictions(output: str, probabilities: np.ndarray, source: str) -> None:
    """Write (N, classes) probabilities to output: a .csv gets the predicted class per image
    (id,label), anything else the array as .npy; ``source`` names the checkpoint in the message."""
    if output.lower().endswith(".csv"):  # the hand-in format: a predicted class per image
        labels = probabilities.argmax(axis=1)
        text = "id,label\n" + "".join(f"{i},{int(c)}\n" for i, c in enumerate(labels))
        atomic.write_text(output, text, checkpoints.CheckpointError, flag="--output")
        print(f"wrote {output}: the predicted class of {len(labels)} images from {source}")
        return
    atomic.write(output, probabilities, lambda a, f: np.save(f, a, allow_pickle=False),
                 checkpoints.CheckpointError, flag="--output")
    print(f"wrote {output}: {probabilities.shape[0]} x {probabilities.shape[1]} probabilities "
          f"from {source}")


def predict_run(config: Config, number, private: str, output: str, explicit) -> None:
    """Predict the images of the .npy ``private`` with checkpoint ``number`` (default: the
    newest) and write them to ``output``. ``explicit``: the configuration flags the command line
    gave. Run on rank 0 only."""
    number = number if number is not None else checkpoint_config.newest(config)
    source = checkpoints.find_checkpoint(config.modeldir, number)
    # Say what is wrong with --output before spending time on the predictions.
    check_output(output, "--output", config.modeldir,
                 [private, source] + DataReader.data_files(config.data_dir))
    config = checkpoint_config.config_from_checkpoint(config, explicit, number)
    announce(config)
    model = Model.MyModel(config)
    x = DataReader.load_testing_images(private)
    model.load(number)
    write_predictions(output, model.predict_prob(x), os.path.basename(source))

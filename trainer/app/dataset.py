"""The data set a configuration names: its files made present (before training), and read."""
import DataReader
from configure import Config


def ensure_data(config: Config) -> None:
    """The data set's files, else its official archive in data_dir (MD5 checked), else the
    download from download_url (checked against the official MD5 too)."""
    DataReader.ensure_dataset(config.data_dir, config.dataset, config.download,
                              config.download_url)


def load(config: Config):
    """The data set of config: (x_train, y_train, x_test, y_test), rows of 3072 uint8 values and
    labels in [0, num_classes) of its label_mode."""
    return DataReader.load_data(config.data_dir, config.num_classes, config.dataset,
                                config.label_mode)

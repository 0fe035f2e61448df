"""Every default of the trainer, in one place.

Each field becomes a command-line flag of the same name in ``main.py``; the comment after a default
gives its unit or source. The resolved configuration is printed at start and stored, as a plain
dict, in every checkpoint. One file holds them all, with the checks that span several of them, so
it runs past the package's usual ~350 lines.
"""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import List, Tuple

# The official python versions of the data sets, and the MD5s published beside them
# (https://www.cs.toronto.edu/~kriz/cifar.html).
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"  # the official python version
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published beside the archive
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"  # the same for CIFAR-100
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # published beside the archive
OFFICIAL_URLS = {"cifar10": CIFAR10_URL, "cifar100": CIFAR100_URL}
OFFICIAL_MD5S = {"cifar10": CIFAR10_MD5, "cifar100": CIFAR100_MD5}
# Classes of each (dataset, label_mode): CIFAR-100 labels each image with one of 100 fine classes
# and one of 20 coarse superclasses; CIFAR-10 has only its 10.
CLASS_COUNTS = {("cifar10", "fine"): 10, ("cifar100", "fine"): 100, ("cifar100", "coarse"): 20}
NETWORKS = ("resnet", "resnet18", "simple_nn", "simple_cnn", "resnet9", "airbench", "resnet50")
# --recipe fast: what it sets (explicit flags still win). Measured on the real-image copy of
# CIFAR-10 against the course recipe; see BENCHMARKS.md.
RECIPE_FAST = {"lr_schedule": "onecycle", "warmup_epochs": 2.0, "learning_rate": 0.2,
               "nesterov": True, "weight_decay": 5e-4, "no_decay_bn_bias": True,
               "label_smoothing": 0.1, "normalize": "dataset", "max_epoch": 15,
               # of airbench94's techniques, those that helped ResNet-20 in 15 epochs
               # (BENCHMARKS.md, "The speed techniques on ResNet-20")
               "translate": 2, "pad_mode": "reflect", "bias_lr_scale": 4.0, "tta": "six"}
# --recipe speed: airbench94's recipe (Jordan 2024, arXiv 2404.00498, legacy/airbench94.py) on its
# whitened convnet, with the width chosen for --budget_minutes (width_scale 0: see
# trainer/training/sizing.py) and its six-view test-time augmentation the default of --mode test
# and predict for the checkpoints it makes.
RECIPE_SPEED = {"network": "airbench", "width_scale": 0.0, "whiten": True, "batch_size": 1024,
                "decoupled": True, "learning_rate": 11.5, "weight_decay": 0.0153,
                "momentum": 0.85, "nesterov": True, "bias_lr_scale": 64.0,
                "whiten_bias_share": 0.3, "label_smoothing": 0.2, "lr_schedule": "triangle",
                "lookahead": True, "muon_lr": 0.12,
                "flip": "alternating", "translate": 2, "pad_mode": "reflect",
                "normalize": "dataset", "tta": "six", "max_epoch": 10, "cpu_processes": 0}
# --recipe transfer: fine-tune torchvision's ImageNet ResNet-50 (a DS542 CIFAR-100 report's
# transfer part): the new head alone for the first epoch, then everything at a tenth of the course
# rate, cosine to 0 over 5 epochs. Weight decay 1e-4: torchvision's ImageNet recipe for ResNet-50,
# which the pretrained weights were tuned under (a stronger 5e-4 pulls them away from it).
RECIPE_TRANSFER = {"network": "resnet50", "pretrained": "imagenet", "learning_rate": 0.01,
                   "momentum": 0.9, "weight_decay": 1e-4, "lr_schedule": "cosine",
                   "max_epoch": 5, "freeze_epochs": 1, "batch_size": 64}
RECIPES = {"course": {}, "fast": RECIPE_FAST, "speed": RECIPE_SPEED, "transfer": RECIPE_TRANSFER}
# Keys that shape some networks only (NetWork.build_network ignores them elsewhere): as flags they
# are refused where they do not apply, and a checkpoint's value of them is not compared there.
NETWORK_SPECIFIC = {"resnet_version": ("resnet",), "resnet_size": ("resnet",),
                    "first_num_filters": ("resnet",), "downsample": ("resnet", "resnet18"),
                    "shortcut": ("resnet", "resnet18"), "batch_norm": ("simple_nn", "simple_cnn"),
                    "activation": ("resnet", "resnet18", "simple_nn", "simple_cnn"),
                    "width_scale": ("resnet9", "airbench"), "whiten": ("airbench",),
                    "whiten_bias_share": ("airbench",),
                    "pretrained": ("resnet50",), "pretrained_file": ("resnet50",),
                    "freeze_epochs": ("resnet50",), "input_size": ("resnet50",),
                    # resnet50 standardizes with the ImageNet statistics its weights expect
                    "normalize": tuple(n for n in NETWORKS if n != "resnet50")}
MAX_SEED = 2 ** 63 - 1  # torch.manual_seed takes a signed 64-bit seed
MAX_BUDGET_MINUTES = 365 * 24 * 60  # a year: longer budgets are typos, and past ~1e300 overflow


class ConfigError(ValueError):
    """A configuration value a user set is unusable; the message names the flag."""


def applies(key: str, network: str) -> bool:
    """Whether ``key`` shapes ``network`` (keys outside NETWORK_SPECIFIC shape every network)."""
    return network in NETWORK_SPECIFIC.get(key, (network,))


def flag(key: str, value) -> str:
    """How the command line sets key to value: --batch_norm, --no_batch_norm, --lr_decay_epochs
    100 150, --learning_rate 0.1."""
    if isinstance(value, bool):
        if key.startswith("no_"):  # such a flag has no "off" twin: leaving it out turns it off
            return f"--{key}" if value else f"without --{key}"
        return f"--{key}" if value else f"--no_{key}"
    if isinstance(value, (list, tuple)):
        return " ".join([f"--{key}"] + [str(v) for v in value])
    return f"--{key} {value}"


def _opt(default, help_text, **kwargs):
    return field(default=default, metadata={"help": help_text, **kwargs})


@dataclass
class Config:
    # --- network (He et al. 2016, Sec. 4.2) ---
    network: str = _opt("resnet", "resnet (the ResNets below), resnet18 (ResNet-18 for 32x32), the "
                                  "course baselines simple_nn (LeNet-style) and simple_cnn, or "
                                  "the speed networks resnet9 (DAWNBench's ResNet-9, Page 2018) "
                                  "and airbench (airbench94's whitened convnet, Jordan 2024), "
                                  "or resnet50 (torchvision's ImageNet ResNet-50, a new head; "
                                  "needs torchvision)",
                        choices=NETWORKS)
    resnet_version: int = _opt(1, "1: standard blocks (ResNet v1); 2: pre-activation bottlenecks (v2)",
                               choices=(1, 2))
    resnet_size: int = _opt(3, "blocks per stack n: depth 6n+2 for v1 (3 -> ResNet-20), 9n+2 for v2 "
                               "(18 -> ResNet-164)")
    first_num_filters: int = _opt(16, "filters of the first stack; doubled at each later stack (paper: 16)")
    num_classes: int = _opt(0, "number of classes; 0: from the data set (10 for CIFAR-10, 100 for "
                               "CIFAR-100 fine, 20 coarse)")
    batch_norm: bool = _opt(False, "simple_nn/simple_cnn: batch norm after each convolution")
    downsample: str = _opt("b", "where a ResNet block downsamples: a (stride on the bottleneck's first "
                                "1x1, original paper), b (on the 3x3), d (b, and a 2x2 average pool "
                                "before the projection shortcut)", choices=("a", "b", "d"))
    shortcut: str = _opt("projection", "ResNet shortcut where the shape changes: projection (1x1 "
                                       "conv, course skeleton) or pad (the paper's option A: "
                                       "subsample and zero-pad, no parameters)",
                         choices=("projection", "pad"))
    activation: str = _opt("relu", "relu, or swish (x * sigmoid(x), Ramachandran et al. 2017); the "
                                   "course networks only (resnet9 has ReLU, airbench GELU)",
                           choices=("relu", "swish"))
    width_scale: float = _opt(1.0, "resnet9/airbench: every width times this, rounded (1: the "
                                   "published 64/128/256/512 and 64/256/256; 0: chosen for "
                                   "--budget_minutes by the measured speed, 1 without a budget)")
    whiten: bool = _opt(False, "airbench: set the first layer's 12 filters (and their negatives) "
                               "from the covariance of the training images' 2x2 patches before a "
                               "fresh run, and keep them fixed (airbench94)")
    whiten_bias_share: float = _opt(1.0, "airbench: the first (whitening) layer's bias learns "
                                         "during this share of the run's steps, then stays "
                                         "(airbench94: its first 3 of 9.9 epochs; 1: all run)")
    pretrained: str = _opt("none", "resnet50: none (random weights) or imagenet (torchvision's "
                                   "ImageNet weights, downloaded once into $TORCH_HOME, and a new "
                                   "head for the data set's classes)",
                           choices=("none", "imagenet"))
    pretrained_file: str = _opt("", "resnet50 with --pretrained imagenet: read the ImageNet "
                                    "weights from this state_dict file (torchvision's "
                                    "resnet50-*.pth) instead of the download cache")
    input_size: int = _opt(224, "resnet50: images are resized to this many pixels square on the "
                                "device (bilinear) before the network (ImageNet: 224)")
    freeze_epochs: int = _opt(0, "resnet50: for the first this many epochs only the new head "
                                 "trains; the backbone's weights and batch-norm statistics stay "
                                 "fixed")
    normalize: str = _opt("per_image", "input standardization: per_image (each image by its own "
                                       "mean and deviation, course skeleton) or dataset (channel "
                                       "means and deviations of the training split)",
                          choices=("per_image", "dataset"))

    # --- optimization (paper Sec. 4.2; weight decay as in the course skeleton) ---
    batch_size: int = _opt(128, "images per training step (paper: 128)")
    learning_rate: float = _opt(0.1, "initial SGD learning rate (paper: 0.1)")
    momentum: float = _opt(0.9, "SGD momentum (paper: 0.9)")
    weight_decay: float = _opt(2e-4, "L2 weight decay (course skeleton: 2e-4; paper: 1e-4)")
    l1: float = _opt(0.0, "L1 penalty: this times the sum of |w| over all parameters is added to the "
                          "training loss (0: none)")
    lr_decay_epochs: Tuple[int, ...] = _opt((100, 150), "epochs after which the learning rate is "
                                            "multiplied by lr_decay_factor (paper: 32k and 48k "
                                            "iterations, about 91 and 137 epochs)", nargs="*")
    lr_decay_factor: float = _opt(0.1, "learning-rate multiplier at each decay epoch (paper: 0.1)")
    lr_schedule: str = _opt("step", "step (decay at lr_decay_epochs, paper), cosine (to 0 at the "
                                    "end), onecycle (linear rise over the warm-up, 30%% of the "
                                    "run without one, then linear fall to 0), or triangle "
                                    "(airbench94's: from 0.2 x the rate up to it over the "
                                    "warm-up, 23%% of the run without one, then down to 0.07 x "
                                    "it); set every step",
                            choices=("step", "cosine", "onecycle", "triangle"))
    warmup_epochs: float = _opt(0.0, "epochs (may be fractional) of linear warm-up from 0 to "
                                     "learning_rate, step by step")
    nesterov: bool = _opt(False, "Nesterov momentum")
    no_decay_bn_bias: bool = _opt(False, "no weight decay on batch-norm weights and biases")
    label_smoothing: float = _opt(0.0, "share of each target spread evenly over all classes "
                                       "(Szegedy et al. 2016; 0: none)")
    bias_lr_scale: float = _opt(1.0, "the batch-norm biases learn at this many times the "
                                     "learning rate, their weight decay unchanged (airbench94's "
                                     "bias_scaler: 64; 1: the same rate as the rest)")
    decoupled: bool = _opt(False, "airbench's decoupled parametrisation (Jordan 2024, arXiv "
                                  "2404.00498, airbench94.py): --learning_rate is the step per "
                                  "1024 examples, so SGD's rate is learning_rate * batch_size / "
                                  "(1024 * (1 + 1 / (1 - momentum))), and --weight_decay is the "
                                  "shrink per 1024 examples, batch_size * weight_decay / (1024 * "
                                  "(1 + 1 / (1 - momentum))) of each weight a step at the full "
                                  "schedule, whatever the rate (airbench94: lr 11.5, decay 0.0153)")
    muon_lr: float = _opt(0.0, "convolution filters take orthogonalized momentum steps (Muon, "
                               "Jordan et al. 2024) at this rate, on the schedule's shape, their "
                               "weights held at norm sqrt(out channels) and no weight decay; "
                               "the rest stays SGD (airbench94_muon: 0.24; 0: off)")
    muon_momentum: float = _opt(0.6, "the filters' momentum under --muon_lr (Nesterov's with "
                                     "--nesterov; airbench94_muon: 0.6)")
    lookahead: bool = _opt(False, "lookahead (Zhang et al. 2019, as in airbench94): every "
                                  "lookahead_every steps the slow weights move toward the network "
                                  "and the network is set to them; at the end it takes them")
    lookahead_decay: float = _opt(0.95 ** 5, "the slow weights' decay at the end of the run; at "
                                             "progress p of the run it is this times p**3 "
                                             "(airbench94: 0.95**5)")
    lookahead_every: int = _opt(5, "steps between lookahead updates (airbench94: 5)")
    ema: float = _opt(0.0, "keep an exponential moving average of the weights with this decay "
                           "(e.g. 0.999) and validate, test and predict with it (0: off)")
    max_epoch: int = _opt(200, "epochs to train (course skeleton: 200; paper: 64k iterations, ~182)")
    final_epoch_share: float = _opt(1.0, "share of its steps the last epoch trains: a "
                                         "--budget_minutes plan sets it to spend the budget "
                                         "(1: the whole epoch)")
    plan_anchor: tuple = _opt((), "set by a --budget_minutes replan, not a flag: (step, progress, "
                                   "rise, fall) where the plan changed, from which the schedule "
                                   "goes on (trainer/training/schedules.py)", internal=True)
    save_interval: int = _opt(10, "write a checkpoint every this many epochs (and at the last one)")
    seed: int = _opt(0, "seed of the initial weights, the batch order and the augmentation "
                        "(0 to 2**63 - 1)")
    recipe: str = _opt("course", "a named set of defaults that explicit flags override: course "
                                 "(the paper's and the course's, as listed here), fast (the "
                                 "best short ResNet-20 recipe measured, see BENCHMARKS.md: "
                                 + "; ".join(f"{k} {v}" for k, v in RECIPE_FAST.items())
                                 + "), speed (the most accurate model for --budget_minutes: "
                                 "airbench94's recipe, its width chosen for the budget: "
                                 + "; ".join(f"{k} {v}" for k, v in RECIPE_SPEED.items())
                                 + "), or transfer (fine-tune the ImageNet ResNet-50: "
                                 + "; ".join(f"{k} {v}" for k, v in RECIPE_TRANSFER.items()) + ")",
                       choices=tuple(RECIPES))
    budget_minutes: float = _opt(0.0, "fit the run into this many minutes of wall time, "
                                      "validation included: time the first steps, then set "
                                      "max_epoch and stretch the schedule to match (0: off)")

    # --- data ---
    dataset: str = _opt("cifar10", "the data set: cifar10 or cifar100 (Krizhevsky 2009)",
                        choices=("cifar10", "cifar100"))
    label_mode: str = _opt("fine", "CIFAR-100 labels: fine (100 classes) or coarse (20 "
                                   "superclasses)", choices=("fine", "coarse"))
    split_index: int = _opt(45000, "training images before the validation split (paper: 45k/5k)")
    train_all: bool = _opt(False, "train on all 50,000 images with no validation (the course's "
                                  "final step)")
    translate: int = _opt(4, "training crops: pad this many pixels each side, then crop 32x32 at a "
                             "random offset (paper: 4; airbench94: 2, reflect padding); 0: none")
    flip: str = _opt("random", "training mirror images: random (each image with probability 0.5 "
                               "each epoch, paper) or alternating (at random in the first epoch, "
                               "then each image the opposite of its previous epoch; airbench94)",
                     choices=("random", "alternating"))
    pad_mode: str = _opt("constant", "padding before the random crop: constant (zeros, paper) or "
                                     "reflect", choices=("constant", "reflect"))
    data_dir: str = _opt("./data", "folder holding cifar-10-batches-py or cifar-100-python (or "
                                   "their files themselves)")
    download: bool = _opt(True, "fetch the official archive of --dataset when data_dir holds none")
    download_url: str = _opt("official", "where to fetch the archive of --dataset from: official "
                                         "(the University of Toronto's URL) or a mirror's URL")
    modeldir: str = _opt("./model_v1", "folder for checkpoints and predictions")

    # --- hardware ---
    device: str = _opt("auto", "auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps")
    channels_last: str = _opt("auto", "channels-last memory format: auto (on), on, off "
                                      "(measured faster on CPU and on GPU)", choices=("auto", "on", "off"))
    amp: str = _opt("auto", "mixed precision: auto (bf16 on CUDA where supported, else fp16 with a "
                            "gradient scaler; on a CPU, a new training run times a few bf16 and "
                            "fp32 steps of its network and keeps the faster, which config.json "
                            "and the checkpoints store and a resume keeps; off on MPS, and when "
                            "testing or predicting on a CPU), bf16, fp16, off",
                    choices=("auto", "bf16", "fp16", "off"))
    compile: bool = _opt(False, "torch.compile the network (opt-in: slow to start)")
    cpu_processes: int = _opt(1, "training on a CPU: 1 uses every core the run may use (taskset, "
                                 "a CPU quota, OMP_NUM_THREADS) as threads of one process; N "
                                 "starts N processes of one thread each over gloo, as torchrun "
                                 "would; 0 times both at the start and keeps the faster (the "
                                 "speed recipe's). config.json records the count; a resume keeps "
                                 "its checkpoint's")
    cudnn_benchmark: bool = _opt(True, "let cuDNN pick the fastest convolution algorithms (CUDA only)")
    eval_batch_size: int = _opt(1000, "images per batch when evaluating and predicting")
    sync_bn: bool = _opt(False, "under torchrun: batch-norm statistics of the whole global batch, "
                                "not of each process's share")
    dist_timeout: float = _opt(300.0, "under torchrun: seconds a process waits for the others "
                                      "before giving up (a process that died ends the run)")
    tta: str = _opt("off", "test and predict: flip averages the class probabilities of each image "
                           "and its mirror image; six averages the logits of the image and its "
                           "mirror (weight 1/4 each) and of both shifted one pixel up-left and "
                           "down-right, reflect-padded (1/8 each; airbench94's tta_level 2)",
                    choices=("off", "flip", "six"))

    # --- output ---
    quiet: bool = _opt(False, "no progress bars (the per-epoch lines stay); bars show only on a "
                              "terminal anyway")
    tensorboard: str = _opt("", "also log the per-epoch numbers to TensorBoard in this folder "
                                "(needs the tensorboard package)")

    def __post_init__(self):
        self.lr_decay_epochs = tuple(int(e) for e in self.lr_decay_epochs)
        if isinstance(self.plan_anchor, list):  # as config.json and a checkpoint hold it
            self.plan_anchor = tuple(self.plan_anchor)
        # Resolved here, so that the printed config and every checkpoint hold the real values. An
        # unknown dataset or label_mode leaves them as they are, for validate() to name.
        if self.num_classes is None or self.num_classes == 0:
            self.num_classes = CLASS_COUNTS.get((self.dataset, self.label_mode), self.num_classes)
        if self.download_url == "official":
            self.download_url = OFFICIAL_URLS.get(self.dataset, self.download_url)

    def validate(self, n_train: int = None, world_size: int = 1) -> "Config":
        """Raise ConfigError naming the first flag that makes no sense; return self."""
        positive_ints = ("resnet_size", "first_num_filters", "batch_size", "max_epoch",
                         "save_interval", "eval_batch_size", "split_index", "lookahead_every")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name} must be a positive integer, not {value!r}.")
        if isinstance(self.cpu_processes, bool) or not isinstance(self.cpu_processes, int) or \
                self.cpu_processes < 0:
            raise ConfigError(f"--cpu_processes must be 0 (choose), 1 (threads) or a number of "
                              f"processes, not {self.cpu_processes!r}.")
        if self.resnet_version not in (1, 2):
            raise ConfigError(f"--resnet_version must be 1 or 2, not {self.resnet_version!r}.")
        if self.dataset not in OFFICIAL_URLS:
            raise ConfigError(f"--dataset must be cifar10 or cifar100, not {self.dataset!r}.")
        if self.label_mode not in ("fine", "coarse"):
            raise ConfigError(f"--label_mode must be fine or coarse, not {self.label_mode!r}.")
        if (self.dataset, self.label_mode) not in CLASS_COUNTS:
            raise ConfigError(f"--label_mode {self.label_mode} applies to --dataset cifar100 only; "
                              f"drop it, or pass --dataset cifar100.")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or \
                self.num_classes < 2:
            raise ConfigError(f"--num_classes must be at least 2 (or 0 to follow the data set), "
                              f"not {self.num_classes}.")
        for name in ("learning_rate", "momentum", "weight_decay", "lr_decay_factor", "l1",
                     "warmup_epochs", "label_smoothing", "ema", "budget_minutes", "dist_timeout",
                     "bias_lr_scale", "lookahead_decay", "whiten_bias_share", "muon_lr",
                     "muon_momentum"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"--{name} must be a finite number, not {getattr(self, name)}.")
        if not self.learning_rate > 0:
            raise ConfigError(f"--learning_rate must be positive, not {self.learning_rate}.")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), not {self.momentum}.")
        if not self.weight_decay >= 0:
            raise ConfigError(f"--weight_decay must be zero or positive, not {self.weight_decay}.")
        if not self.l1 >= 0:
            raise ConfigError(f"--l1 must be zero or positive, not {self.l1}.")
        if self.lr_schedule not in ("step", "cosine", "onecycle", "triangle"):
            raise ConfigError(f"--lr_schedule must be step, cosine, onecycle or triangle, not "
                              f"{self.lr_schedule!r}.")
        if isinstance(self.final_epoch_share, bool) or \
                not isinstance(self.final_epoch_share, (int, float)) or \
                not 0 < self.final_epoch_share <= 1:
            raise ConfigError(f"--final_epoch_share must be in (0, 1], not "
                              f"{self.final_epoch_share!r}.")
        if not 0 <= self.warmup_epochs < self.max_epoch:
            if self.from_recipe("warmup_epochs") and self.warmup_epochs >= 0:
                raise ConfigError(f"--recipe {self.recipe} warms up for {self.warmup_epochs:g} "
                                  f"epochs, more than --max_epoch {self.max_epoch} holds; give a "
                                  f"larger --max_epoch or a shorter --warmup_epochs.")
            raise ConfigError(f"--warmup_epochs must be at least 0 and below --max_epoch "
                              f"{self.max_epoch}, not {self.warmup_epochs:g}.")
        if self.nesterov and self.momentum == 0:
            source = f"--recipe {self.recipe} uses Nesterov momentum, which" \
                if self.from_recipe("nesterov") else "--nesterov"
            raise ConfigError(f"{source} needs momentum; give --momentum above 0 or pass "
                              f"--no_nesterov.")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label_smoothing must be in [0, 1), not {self.label_smoothing}.")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"--ema must be a decay in (0, 1), e.g. 0.999, or 0 for none; not "
                              f"{self.ema}.")
        if not self.bias_lr_scale > 0:
            raise ConfigError(f"--bias_lr_scale must be positive, not {self.bias_lr_scale}.")
        if not 0 <= self.whiten_bias_share <= 1:
            raise ConfigError(f"--whiten_bias_share must be in [0, 1], not "
                              f"{self.whiten_bias_share}.")
        if not self.muon_lr >= 0:
            raise ConfigError(f"--muon_lr must be zero (off) or positive, not {self.muon_lr}.")
        if not 0 <= self.muon_momentum < 1:
            raise ConfigError(f"--muon_momentum must be in [0, 1), not {self.muon_momentum}.")
        if not 0 <= self.lookahead_decay <= 1:
            raise ConfigError(f"--lookahead_decay must be in [0, 1], not {self.lookahead_decay}.")
        if isinstance(self.translate, bool) or not isinstance(self.translate, int) or \
                not 0 <= self.translate <= 16:
            raise ConfigError(f"--translate must be a whole number of pixels from 0 to 16, not "
                              f"{self.translate!r}.")
        if self.flip not in ("random", "alternating"):
            raise ConfigError(f"--flip must be random or alternating, not {self.flip!r}.")
        if not self.dist_timeout > 0:
            raise ConfigError(f"--dist_timeout must be a positive number of seconds, not "
                              f"{self.dist_timeout}.")
        if isinstance(self.width_scale, bool) or not isinstance(self.width_scale, (int, float)) \
                or not 0 <= self.width_scale < math.inf:
            raise ConfigError(f"--width_scale must be a positive number (1: the published widths; "
                              f"0: chosen for --budget_minutes), not {self.width_scale!r}.")
        if not 0 <= self.budget_minutes <= MAX_BUDGET_MINUTES:
            raise ConfigError(f"--budget_minutes must be zero (none) or positive, and at most "
                              f"{MAX_BUDGET_MINUTES} (a year), not {self.budget_minutes:g}.")
        if self.downsample == "d" and self.shortcut == "pad":
            raise ConfigError("--downsample d pools before a projection shortcut, and --shortcut pad "
                              "has none; use --downsample a or b with --shortcut pad.")
        if not 0 < self.lr_decay_factor <= 1:
            raise ConfigError(f"--lr_decay_factor must be in (0, 1], not {self.lr_decay_factor}.")
        decay = list(self.lr_decay_epochs)
        if any(e < 1 for e in decay) or decay != sorted(set(decay)):
            raise ConfigError(f"--lr_decay_epochs must be positive epochs in increasing order, "
                              f"not {' '.join(map(str, decay))}.")
        if isinstance(self.freeze_epochs, bool) or not isinstance(self.freeze_epochs, int) or \
                self.freeze_epochs < 0:
            raise ConfigError(f"--freeze_epochs must be 0 or a positive number of epochs, not "
                              f"{self.freeze_epochs!r}.")
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or \
                not 32 <= self.input_size <= 1024:
            raise ConfigError(f"--input_size must be a whole number of pixels from 32 to 1024, "
                              f"not {self.input_size!r}.")
        if self.pretrained not in ("none", "imagenet"):
            raise ConfigError(f"--pretrained must be none or imagenet, not {self.pretrained!r}.")
        if self.pretrained_file and self.pretrained != "imagenet":
            raise ConfigError("--pretrained_file holds ImageNet weights; pass --pretrained "
                              "imagenet with it, or drop it.")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"--seed must lie between 0 and 2**63 - 1 ({MAX_SEED}), not "
                              f"{self.seed}.")
        if self.batch_size % world_size:
            below = self.batch_size - self.batch_size % world_size
            raise ConfigError(f"--batch_size {self.batch_size} does not divide among {world_size} "
                              f"processes: --batch_size is the global batch, and each process "
                              f"takes an equal share of it; use a multiple of {world_size}"
                              + (f", such as {below}." if below else "."))
        if n_train is not None and self.batch_size > n_train:
            raise ConfigError(f"--batch_size {self.batch_size} is larger than the {n_train} training "
                              f"images; use a smaller batch size or more data.")
        return self

    def apply_recipe(self, explicit=()) -> "Config":
        """Set the values --recipe names, except those of the flags in ``explicit``; return self.

        The keys it set are remembered (``from_recipe``), so that messages can name the recipe
        rather than a flag the user never gave, and a time budget can scale the recipe's warm-up.
        """
        if self.recipe not in RECIPES:
            raise ConfigError(f"--recipe must be course, fast, speed or transfer, not "
                              f"{self.recipe!r}.")
        self._recipe_keys = frozenset(k for k in RECIPES[self.recipe] if k not in explicit)
        for key in self._recipe_keys:
            setattr(self, key, RECIPES[self.recipe][key])
        return self

    def from_recipe(self, key: str) -> bool:
        """Whether key holds the value apply_recipe gave it (not one the user gave)."""
        return key in getattr(self, "_recipe_keys", ())

    def check_applicable(self, explicit) -> "Config":
        """Refuse a network flag given explicitly for a network it does not shape; return self."""
        for key in sorted(explicit):
            if not applies(key, self.network):
                shaped = " and ".join(NETWORK_SPECIFIC[key])
                raise ConfigError(f"--{key} does not apply to --network {self.network} (it shapes "
                                  f"{shaped} only); drop it.")
        return self

    def to_dict(self) -> dict:
        """Plain types only, so a checkpoint holding it loads with weights_only=True."""
        d = dataclasses.asdict(self)
        d["lr_decay_epochs"] = list(self.lr_decay_epochs)
        d["plan_anchor"] = list(self.plan_anchor)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Keys that define what a run computes; resuming with any of them changed is refused.
# max_epoch and save_interval may change (to extend a run), as may the hardware settings.
RUN_DEFINING_KEYS: List[str] = [
    "network", "resnet_version", "resnet_size", "first_num_filters", "num_classes", "batch_norm",
    "downsample", "shortcut", "activation", "normalize", "dataset", "label_mode",
    "width_scale", "whiten", "whiten_bias_share",
    "batch_size", "learning_rate", "momentum", "weight_decay", "l1", "lr_decay_epochs",
    "lr_decay_factor", "seed", "split_index", "train_all", "pad_mode",
    "lr_schedule", "warmup_epochs", "final_epoch_share", "nesterov", "no_decay_bn_bias", "label_smoothing", "ema",
    "sync_bn", "bias_lr_scale", "decoupled", "lookahead", "lookahead_decay", "lookahead_every",
    "muon_lr", "muon_momentum",
    "translate", "flip", "pretrained", "freeze_epochs", "input_size",
]
# The network's shape, and what its outputs mean: a checkpoint is refused for test, predict or
# resume when any of these differ.
ARCHITECTURE_KEYS: List[str] = ["network", "resnet_version", "resnet_size", "first_num_filters",
                                "num_classes", "batch_norm", "downsample", "shortcut", "activation",
                                "normalize", "dataset", "label_mode", "width_scale",
                                "input_size"]

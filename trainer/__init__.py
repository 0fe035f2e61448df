"""The machinery under the six course files, one folder per job.

Layers, each importing only from those above it in this list (and from the course's base files
configure, ImageUtils and NetWork):

    storage/     atomic writes of every file the project makes
    parallel/    torchrun: process groups, agreements, sums, synchronized batch norm
    data/        the data set files and their safe readers
    run/         checkpoints and the model folder: format, checks, lock, records
    training/    the training step and loop, schedules, EMA, batches, budgets, stop requests
    reports/     the test report, curves and weights pictures, TensorBoard
    app/         the services behind main.py's modes; they drive Model.MyModel and DataReader,
                 as the course's main.py does
"""

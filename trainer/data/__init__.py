"""The data set files: where they are, how they are read, and reading strangers' files safely."""

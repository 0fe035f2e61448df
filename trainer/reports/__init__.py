"""What a user reads or looks at: the test report, pictures, TensorBoard logs."""

"""The service layer: every rule lives here; views parse input and call one function."""

"""The ground floor: the only code that knows an external model's or endpoint's API."""

"""Reports: console tables and progress bars (rich), JSON results."""

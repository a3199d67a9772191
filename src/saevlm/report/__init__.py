"""Reports: gather a run directory into tables and figures beside the paper's numbers."""

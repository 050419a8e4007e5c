"""The grid layer: a profile's runs executed and kept. Profiles and their value checks (`profiles`, `values`), the
executor (`runner`), scheduler jobs (`cluster`), re-runs of committed runs (`reproduce`, `speedup`). Imports the study
layer and below."""

"""Data stage: harvest papers from arXiv, load and validate the corpus, build task datasets."""

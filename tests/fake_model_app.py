"""Streamlit entry script for browser tests: the real app (`econlm/app/main.py`) with the tests'
deterministic `FakeBackend` and `HashEmbedder` put in each session first, where the app's loaders
look before loading a model (as tests/test_app.py does through AppTest). Run with `streamlit run`."""

import runpy
import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fakes import FakeBackend, HashEmbedder  # found through the path set above

import econlm.app

st.session_state.setdefault("backend", FakeBackend())
st.session_state.setdefault("embedder", HashEmbedder())
runpy.run_path(str(Path(econlm.app.__file__).with_name("main.py")), run_name="__main__")

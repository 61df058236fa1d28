"""Classify: paste an abstract, get econ.EM / econ.GN / econ.TH with the three probabilities."""

import pandas as pd
import streamlit as st

from econlm.app import state, tasks
from econlm.errors import UserError
from econlm.types import CATEGORIES

st.title("Classify")
state.model_caption()
abstract = st.text_area("Abstract", height=220, placeholder="Paste the abstract of an economics paper ...")
if st.button("Classify", type="primary"):
    try:
        stacked = state.classifier()
        with st.spinner("Scoring the three categories ..."):
            probabilities = tasks.classify(state.backend(), abstract, stacked)
    except UserError as exc:
        state.fail(str(exc))
    best = max(probabilities, key=probabilities.get)
    st.subheader(f"{best} · {CATEGORIES[best]}")
    st.markdown(" · ".join(f"{label}: {p:.1%}" for label, p in probabilities.items()))
    st.caption("econlm classifier: the model's label log-probabilities stacked with TF-IDF logistic regression "
               "and XGBoost" if stacked is not None else "The model's probabilities over the three answers")
    chart = pd.DataFrame({"category": list(probabilities), "probability": list(probabilities.values())})
    st.bar_chart(chart, x="category", y="probability", horizontal=True, height=220)

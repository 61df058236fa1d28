"""Title: paste an abstract, get a title (and three sampled alternatives on request)."""

import streamlit as st

from econlm.app import state, tasks
from econlm.errors import UserError

st.title("Title")
state.model_caption()
abstract = st.text_area("Abstract", height=220, placeholder="Paste the abstract of an economics paper ...")
alternatives = st.checkbox("Also suggest 3 alternatives (sampled)")
if st.button("Suggest a title", type="primary"):
    try:
        with st.spinner("Writing a title ..."):
            title, others = tasks.suggest_titles(state.backend(), abstract, alternatives,
                                                 after_category=state.title_after_category())
    except UserError as exc:
        state.fail(str(exc))
    st.subheader(state.escape_markdown(title))
    if others:
        st.markdown("**Alternatives**")
        for other in others:
            st.markdown(f"- {state.escape_markdown(other)}")

"""Entry script of the Streamlit app: `econlm app` runs `streamlit run` on this file."""

from pathlib import Path

import streamlit as st

from econlm.app import settings, state

# Found beside this file, so a script that sets the session up and then runs this one (the browser
# tests do, with a fake model) gets the same pages.
VIEWS = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="econlm", page_icon=":material/school:", layout="wide")

pages = st.navigation(
    [
        st.Page(VIEWS / "title.py", title="Title", icon=":material/title:", default=True),
        st.Page(VIEWS / "classify.py", title="Classify", icon=":material/category:"),
        st.Page(VIEWS / "ask.py", title="Ask", icon=":material/chat:"),
        st.Page(VIEWS / "papers.py", title="Papers", icon=":material/library_books:"),
        st.Page(VIEWS / "documents.py", title="My documents", icon=":material/upload_file:"),
    ]
)
with st.sidebar:
    st.markdown("**econlm** · language models for economics research")
    state.model_caption()
    try:
        default_k = settings.top_k()
    except Exception as exc:  # a bad ECONLM_TOP_K must not take the app down
        st.warning(state.escape_markdown(str(exc)))
        default_k = settings.DEFAULT_TOP_K
    st.slider("Passages per answer (top-k)", 1, 20, min(default_k, 20), key="top_k",
              help="How many retrieved passages the Papers and My documents answers read.")
pages.run()

"""The Streamlit web app (`econlm app`): Title, Classify, Ask, Papers, My documents.

Thin by design: pages call library functions (`econlm.app.tasks`, `econlm.rag`) and keep only
widget code; loaders are cached with `st.cache_resource` in `econlm.app.state`. Tests drive every
page headless with Streamlit's `AppTest`, with a deterministic fake model put in session state.
"""

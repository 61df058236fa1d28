"""Ask: economics Q&A chat with the model, the reply streamed token by token."""

import streamlit as st

from econlm.app import state, tasks
from econlm.errors import UserError

st.title("Ask")
state.model_caption()
history = st.session_state.setdefault("ask_history", [])
if history and st.button("Clear the chat"):
    history.clear()
for message in history:
    with st.chat_message(message["role"]):
        st.text(message["content"])

if question := st.chat_input("Ask an economics question"):
    with st.chat_message("user"):
        st.text(question)
    with st.chat_message("assistant"):
        raw: list[str] = []
        try:
            conversation = tasks.qa_conversation(history, question)
            state.stream_text(state.backend().stream_chat(conversation, tasks.QA_DECODING), raw)
        except UserError as exc:
            state.fail(str(exc))
    history.extend([{"role": "user", "content": question}, {"role": "assistant", "content": "".join(raw)}])

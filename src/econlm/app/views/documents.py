"""My documents: upload PDF, TXT or Markdown into a named index on disk, then chat with it."""

import streamlit as st

from econlm.app import state, tasks
from econlm.errors import UserError
from econlm.rag import answer as rag_answer
from econlm.rag import store
from econlm.rag.loaders import MB, ParseLimits

st.title("My documents")
state.model_caption()
limit_mb = int(st.get_option("server.maxUploadSize"))
indexes = store.list_indexes()
document_indexes = [row["name"] for row in indexes if row.get("kind") == "documents"]

with st.container(border=True):
    st.subheader("Add documents")
    index_name = st.text_input(
        "Index", value=document_indexes[0] if document_indexes else "my-documents", key="upload_index",
        help="Files go into this index (created if new), stored under $ECONLM_HOME/indexes.",
    )
    uploads = st.file_uploader(
        f"PDF, TXT or Markdown files, up to {limit_mb} MB each", accept_multiple_files=True, key="uploads"
    )
    if st.button("Add to index", type="primary", disabled=not uploads):
        try:
            with st.spinner("Reading, splitting and embedding ..."):
                report = tasks.add_uploads(
                    index_name, [(f.name, f.getvalue()) for f in uploads], state.embedder(),
                    ParseLimits(max_bytes=limit_mb * MB),
                )
        except UserError as exc:
            state.fail(str(exc))
        st.session_state["upload_report"] = report
        st.session_state["chat_index"] = index_name
        st.rerun()  # so the list of indexes below includes the new one
    report = st.session_state.get("upload_report")
    if report:
        for line in report.added:  # each line names an uploaded file
            st.success(state.escape_markdown(f"Indexed {line}"))
        for line in report.skipped:
            st.info(state.escape_markdown(line))
        for line in report.errors:
            st.error(state.escape_markdown(line))

for row in indexes:  # manifests only (read on every rerun); loading the chosen index checks its files
    if row["status"].startswith("broken"):
        st.warning(state.escape_markdown(f"Index '{row['name']}' cannot be used: {row['status']} "
                                         f"(remove it with: econlm index delete {row['name']})"))

if not document_indexes:
    st.info("No document index yet: upload files above.")
    st.stop()

st.subheader("Chat with your documents")
if st.session_state.get("chat_index") not in document_indexes:
    st.session_state["chat_index"] = document_indexes[0]
selected = st.selectbox("Index", document_indexes, key="chat_index")
with st.popover("Delete this index"):  # before loading it, so a damaged index can be deleted too
    st.text(f"Delete '{selected}' and all its documents from disk?")
    if st.button("Delete for good", key="delete_index"):
        store.delete_index(store.index_dir(selected))
        st.session_state.get("doc_chats", {}).pop(selected, None)
        st.session_state.pop("upload_report", None)
        st.rerun()
retriever = state.retriever(store.index_dir(selected))
sources = retriever.index.manifest["sources"]
st.caption(state.escape_markdown(f"{len(sources)} document(s), {len(retriever.index.chunks)} passages: "
                                 + ", ".join(f"{s['source']} ({s['pages']} p.)" for s in sources)))

history = st.session_state.setdefault("doc_chats", {}).setdefault(selected, [])
for i, message in enumerate(history):
    with st.chat_message(message["role"]):
        if message["role"] == "user":
            st.text(message["content"])
        else:
            state.show_answer(message["answer"], expanded=i == len(history) - 1)

if question := st.chat_input("Ask about your documents"):
    with st.chat_message("user"):
        st.text(question)
    with st.chat_message("assistant"):
        hits = retriever.search(question, state.top_k())
        if not hits:
            result = rag_answer.nothing_relevant(f"the index '{selected}'")
            state.show_answer(result, expanded=True)
        else:
            try:
                result = state.stream_rag_answer(question, hits)
            except UserError as exc:
                state.fail(str(exc))
            state.show_answer(result, expanded=True, with_text=False)
    history += [{"role": "user", "content": question}, {"role": "assistant", "answer": result}]

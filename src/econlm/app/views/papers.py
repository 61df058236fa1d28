"""Papers: semantic search over the arXiv economics corpus, then questions answered from the hits."""

import streamlit as st

from econlm.app import state
from econlm.errors import UserError
from econlm.rag import store
from econlm.types import CATEGORIES

st.title("Papers")
state.model_caption()
path = store.index_dir(store.PAPERS_INDEX)
if not path.exists():
    st.info(
        "The papers index has not been built yet. Run `econlm index build` (it indexes the arXiv "
        "economics corpus into `$ECONLM_HOME/indexes/papers`), then reload this page."
    )
    st.stop()
retriever = state.retriever(path)
st.caption(f"{len(retriever.index.manifest['sources']):,} papers, {len(retriever.index.chunks):,} passages; "
           "dense (MiniLM + FAISS) and keyword (BM25) search, fused.")

query = st.text_input("Search the economics papers", key="paper_query", placeholder="e.g. minimum wage and employment")
if not query.strip():
    st.stop()
hits = retriever.search(query, state.top_k())
if not hits:
    st.info(state.escape_markdown(f"Nothing relevant was found for “{query}”. Try other words."))
    st.stop()
for hit in hits:
    meta = hit.chunk.metadata
    st.markdown(
        f"**{state.escape_markdown(meta['title'])}**  \n"  # arxiv_id is checked (ARXIV_ID_RE) when the corpus is read
        f"[arXiv:{meta['arxiv_id']}]({meta['url']}) · {meta['category']} ({CATEGORIES[meta['category']]}) · "
        f"similarity {hit.cosine:.2f}"
    )

st.divider()
chat = st.session_state.setdefault("papers_chat", {"query": None, "messages": []})
if chat["query"] != query:  # a new search starts a new conversation about its hits
    chat.update(query=query, messages=[])
# The passages are whole abstracts of the papers listed above: shown folded under each answer.
for message in chat["messages"]:
    with st.chat_message(message["role"]):
        if message["role"] == "user":
            st.text(message["content"])
        else:
            state.show_answer(message["answer"], expanded=False)

if question := st.chat_input("Ask a question across these papers"):
    with st.chat_message("user"):
        st.text(question)
    with st.chat_message("assistant"):
        try:
            result = state.stream_rag_answer(question, hits)
        except UserError as exc:
            state.fail(str(exc))
        state.show_answer(result, expanded=False, with_text=False)
    chat["messages"] += [{"role": "user", "content": question}, {"role": "assistant", "answer": result}]

"""The LangChain components pass langchain-tests' standard suites, and behave as econlm does."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_tests")

from langchain_core.messages import HumanMessage, SystemMessage  # noqa: E402
from langchain_tests.integration_tests import ChatModelIntegrationTests, RetrieversIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402

from econlm.rag import add_files  # noqa: E402
from econlm.rag.langchain import ChatEconlm, EconlmRetriever  # noqa: E402
from fakes import FakeBackend, HashEmbedder, make_pdf  # noqa: E402

PAGES = [
    "Inflation targeting anchors expectations. The central bank raised its policy rate to 4.5 percent in 2023.",
    "Inflation fell after the central bank tightened; wages lagged inflation for two years.",
    "Inflation expectations of households respond to food prices more than to the policy rate.",
    "Minimum wage increases had small employment effects in the county study.",
]


@pytest.fixture
def documents_index(tmp_path, monkeypatch):
    monkeypatch.setenv("ECONLM_HOME", str(tmp_path / "home"))
    add_files("lc-docs", [("report.pdf", make_pdf(PAGES))], HashEmbedder())
    return "lc-docs"


class TestChatEconlmUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self):
        return ChatEconlm

    @property
    def chat_model_params(self) -> dict:
        return {"model": "transformers:econlm"}  # resolved lazily: no model is loaded by these tests


class TestChatEconlmIntegration(ChatModelIntegrationTests):
    """Against the real transformers engine running a 2-layer random model (tests/conftest.py)."""

    @pytest.fixture(autouse=True)
    def _tiny_model(self, tiny_llama):
        type(self).model_spec = f"transformers:{tiny_llama}"

    @property
    def chat_model_class(self):
        return ChatEconlm

    @property
    def chat_model_params(self) -> dict:
        return {"model": self.model_spec, "max_tokens": 16}

    @property
    def has_tool_calling(self) -> bool:
        return False  # econlm's models are not trained to call tools

    @property
    def has_structured_output(self) -> bool:
        return False  # nor to fill a JSON schema

    @property
    def supports_model_override(self) -> bool:
        return False  # supported (see test_model_override_per_call) but needs a second model on disk

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class TestEconlmRetrieverIntegration(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _index(self, documents_index):
        pass

    @property
    def retriever_constructor(self):
        return EconlmRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"index": "lc-docs", "embedder": HashEmbedder()}

    @property
    def retriever_query_example(self) -> str:
        return "inflation and the central bank policy rate"


def test_retriever_documents_carry_source_page_and_citation(documents_index):
    documents = EconlmRetriever(index=documents_index, embedder=HashEmbedder(), k=2).invoke("minimum wage employment")
    assert documents[0].metadata["source"] == "report.pdf" and documents[0].metadata["page"] == 4
    assert documents[0].metadata["citation"] == "[report.pdf, p. 4]" and "Minimum wage" in documents[0].page_content


def test_retriever_unknown_index_says_how_to_make_it(documents_index):
    from econlm.errors import UserError

    with pytest.raises(UserError, match="no index named 'nope'.*econlm index add nope"):
        EconlmRetriever(index="nope", embedder=HashEmbedder()).invoke("anything")


def test_chat_model_maps_roles_and_cuts_at_stop_strings():
    backend = FakeBackend()
    model = ChatEconlm(model="fake:deterministic", backend=backend)
    reply = model.invoke([SystemMessage("Write a title."), HumanMessage("Abstract: Tariffs raise consumer prices a lot")])
    assert reply.content == "Tariffs Raise Consumer Prices A Lot"
    assert [m["role"] for m in backend.conversations[-1]] == ["system", "user"]
    assert model.invoke("Abstract: Tariffs raise consumer prices", stop=[" Consumer"]).content == "Tariffs Raise"
    streamed = "".join(chunk.content for chunk in model.stream("Abstract: Tariffs raise consumer prices", stop=["Prices"]))
    assert streamed == "Tariffs Raise Consumer "
    assert reply.usage_metadata["output_tokens"] == 6


def test_model_override_per_call():
    default, other = FakeBackend(), FakeBackend()
    model = ChatEconlm(model="fake:deterministic", backend=default)
    model._backends["fake:other"] = other
    model.invoke("Abstract: Tariffs", model="fake:other")
    assert len(other.conversations) == 1 and not default.conversations


def test_retriever_and_chat_model_compose_in_a_chain(documents_index):
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    retriever = EconlmRetriever(index=documents_index, embedder=HashEmbedder(), k=1)
    prompt = ChatPromptTemplate.from_messages([("human", "Abstract: {context}\n\nQuestion: {question}")])
    chain = ({"context": retriever | (lambda docs: docs[0].page_content), "question": RunnablePassthrough()}
             | prompt | ChatEconlm(model="fake:deterministic", backend=FakeBackend()) | StrOutputParser())
    assert chain.invoke("minimum wage employment").startswith("Minimum Wage Increases")

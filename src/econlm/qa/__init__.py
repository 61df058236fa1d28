"""Economics Q&A, the study's third task: synthetic question-answer pairs written by a teacher LLM
from paper abstracts (`synthesize`), and their evaluation plus an MMLU-econ knowledge check (`eval`)."""

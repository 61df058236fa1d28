"""Today's filters re-applied to a progress sidecar's stored replies (no teacher calls), over the first
50 validation papers of the seeded order; prints the counts. Corpus: $ECONLM_DATA."""

import json
import os
import sys
from collections import Counter

from econlm.qa.synthesize import Filters, review_reply, select_papers

papers = {p.arxiv_id: p for p in select_papers(os.environ["ECONLM_DATA"], "validation", 50, 0)}
seen: set[str] = set()
total: Counter = Counter()
for line in open(sys.argv[1], encoding="utf-8"):
    record = json.loads(line)
    if record["source_id"] in papers:
        review = review_reply(papers[record["source_id"]], record["reply"], Filters(), seen, record["split"],
                              record["teacher"], record["prompt"])
        total.update(review.counts)
        total["papers"] += 1
        total["papers_with_pairs"] += review.counts["kept"] > 0
print(json.dumps(dict(total), sort_keys=True))

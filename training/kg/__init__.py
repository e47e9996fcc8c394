"""The cross-platform knowledge graph that `xrec data build` writes under the dataset's `kg/` (docs/kg.md).

One module, one job:
  text.py       title clean-up, tokens, the normalised keys names are matched by
  extract.py    which brand, product type and category each item has (catalog attributes, else titles)
  link.py       the same entity on two platforms: equal names, MiniLM + FAISS nearest names, the thresholds
  context.py    how alike two entities' items are (mean MiniLM vectors of their titles)
  graph.py      nodes, edges, components and the summary, as Parquet
  table.py      the items' entities as ranking reads them (contract.kg.ItemEntities): scorer features,
                KG candidates, reasons
  report.py     the build report's lines
  show.py       `xrec kg show`: an item's neighbourhood
  calibrate.py  the thresholds chosen on link_sample.csv (hand-labelled pairs) and their precision/recall
"""

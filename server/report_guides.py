"""The report's reading guides: one short paragraph under each table or figure of `server.report`.

Written for a reader who knows the paper but not this code: what a cell, dot or line
means and which direction is fairer.
"""

HOW_TABLE3 = (
    "*How to read this:* a cell summarises one model family's F1 over the test sites as mean ± sd (a high"
    " sd: some hospitals are served much worse). Indiv. rows are probes trained on one site; \"(fed.)\" "
    "rows are federated models after their last round, tested, like every row, against the first method "
    "row (Unified; the pooled one when there is one). The CSV adds p-values and the number of sites.\n")
HOW_COMPARE = (
    "*How to read this:* pooled model (data moved to one place) → federated model (data stayed at the "
    "sites), final round. Similar means: federation costs nothing; a higher worst-site F1 or a lower max "
    "|AOD| (over sites, densities, age bands): fairer. p-values: one-sided Wilcoxon signed-rank, paired "
    "on sites.\n")
HOW_TSNE = (
    "*How to read this:* one dot per scan (≤ 150 per site, seeded), its FM features reduced by PCA to 50 "
    "dimensions, then t-SNE (PCA init, fixed seed). Single-colour islands in A: the FM encodes the "
    "hospital, a shortcut that breaks on new sites (paper, Fig. 1). An A→D gradient within islands in B: "
    "density is encoded too. Distances between islands mean nothing.\n")
HOW_AOD = (
    "*How to read this:* a cell is AOD = ΔTPR + ΔFPR for one class between a group (test site on top, age"
    " band below) and all other groups pooled (no ½ factor, as in the paper). 0 (white) is fair; red: the"
    " model predicts that class more often for the group than for the rest, blue: less often. All AOD "
    "figures share one colour scale; grey dashes: no data. The density figures are the paper's Fig. 2 "
    "(top).\n")
HOW_CURVES = (
    "*How to read this:* thin lines: each site's F1 on its own test split after every round; thick black:"
    " the worst site; dashed grey: the mean. Protecting the worst site lifts the black line, ideally "
    "without lowering the dashed one.\n")
HOW_WEIGHTS = (
    "*How to read this:* each site's weight when the server averages the updates (dotted: uniform). "
    "GroupDRO starts from sample counts and shifts weight to sites where the global model's loss is high;"
    " FedDG-GA starts uniform and shifts it to sites where the global model generalises worst (global − "
    "local loss).\n")

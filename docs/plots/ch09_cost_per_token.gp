# Caption: Chapter 9: time of one decode step of one layer against the context length (V3.2's attention shape: 128 heads, d_c 512 + 64, index_topk 2048, fp32 caches, one thread): dense MLA (chapter 7's best kernel over every cached token) vs sparse MLA, split into the lightning indexer (over every cached token) and the top-k, gather and attention over 2048 tokens
# Data: ch09_cost_per_token.csv (ch09_sparse_attention): context, measured dense ms, sparse ms, indexer ms, attention ms (top-k + gather + attention), and the FLOP counts
load "style.gp"
data = datadir."/ch09_cost_per_token.csv"
set logscale xy 2
set format y "%g"
set format x "%.0f"
set xlabel "context length T (cached tokens)"
set ylabel "milliseconds per decode step, one layer"
set key bottom right Left reverse box lc rgb "#cccccc" opaque
set grid xtics ytics lc rgb "#dddddd"
plot data using "context":"dense ms" with linespoints pt 7 ps 0.7 lw 2 lc rgb c_plain title "dense MLA (chapter 7, all T tokens)", \
     data using "context":"sparse ms" with linespoints pt 7 ps 0.7 lw 2 lc rgb c_mla title "sparse MLA: the whole step", \
     data using "context":"indexer ms" with linespoints pt 6 ps 0.7 lw 1.5 dt 2 lc rgb c_cached title "  its indexer (all T tokens)", \
     data using "context":"attention ms" with linespoints pt 6 ps 0.7 lw 1.5 dt 2 lc rgb c_mqa title "  its top-k + gather + attention (2048 tokens)"

# Caption: Chapter 9: one query of DeepSeek-V3.2-Exp's golden layer (the last decode step, 26 cached tokens, index_topk 8): dense MLA's attention weights over every cached token (mean of the 4 heads, top) beside the lightning indexer's scores (bottom); green bars are the 8 tokens the indexer keeps, the only ones sparse MLA attends to
# Data: ch09_selection.csv (ch09_sparse_attention): token, index score, kept (0/1), dense weight
load "style.gp"
data = datadir."/ch09_selection.csv"
set terminal svg size 760,560 dynamic enhanced font "DejaVu Sans,12" background rgb "white"
set output outfile
set style fill solid 0.85 noborder
set boxwidth 0.8
stats data using "token" nooutput
set xrange [-0.8:STATS_max + 0.8]
set xtics 0,5 nomirror
kept_colour(k) = k > 0.5 ? 0x55a868 : 0xb0b0b0
set multiplot layout 2,1
set title "dense MLA: attention weight of each cached token (mean over heads)" font ",13"
set ylabel "weight"
set yrange [0:*]
unset xlabel
plot data using "token":"dense weight":(kept_colour(column("kept"))) with boxes lc rgb variable
set title "the lightning indexer: index score of each cached token (green: kept)" font ",13"
set ylabel "index score"
set yrange [*:*]
set xlabel "cached token (position)"
set xzeroaxis lt 1 lc rgb "#444444"
plot data using "token":"index score":(kept_colour(column("kept"))) with boxes lc rgb variable
unset multiplot

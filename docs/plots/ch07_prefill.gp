# Caption: Chapter 7: the engines' prompt-processing and token-generation tables as a figure (16 heads, DeepSeek-V2-Lite's widths): tokens per second of a prefill of N tokens in one chunk from an empty cache, in MHA mode (decompress K and V, flash attention at 192/128 per head) and in MQA mode (absorbed, on the latent at 576/512), and of one decode step after N cached tokens (v5); attention core only, one layer
# Data: ch07_prefill_sweep.csv (mla_bench --mode prefill --sweep): test, impl, prefill_mode, tokens, tokens_per_s
load "style.gp"
data = datadir."/ch07_prefill_sweep.csv"
set logscale x 2
set logscale y 10
set format x "%g"
set format y "%g"
set xlabel "tokens N (pp: the chunk; tg: the context)"
set ylabel "tokens per second (one layer's attention)"
set grid xtics ytics lc rgb "#dddddd"
set key top right box lc rgb "#cccccc"
# The rows of the three curves are interleaved in the CSV; gnuplot joins only consecutive points, so
# each curve reads its own rows (the header line, then the rows of that impl).
rows(impl) = "< (head -n 1 '".data."' && grep ',".impl.",' '".data."')"
plot rows("prefill_mha") using "tokens":"tokens_per_s" with linespoints pt 7 ps 0.8 lw 2 lc rgb c_plain title "pp, MHA mode", \
     rows("prefill_mqa") using "tokens":"tokens_per_s" with linespoints pt 5 ps 0.8 lw 2 lc rgb c_mla title "pp, MQA mode", \
     rows("decode") using "tokens":"tokens_per_s" with linespoints pt 9 ps 0.9 lw 2 lc rgb c_cached title "tg (decode step, v5)"

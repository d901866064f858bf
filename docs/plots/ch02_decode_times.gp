# Caption: Chapter 2: time of one decode step against the context length, recomputing every key and value vs reading them from the KV cache (log-log; median of several runs)
# Data: ch02_decode_times.csv (ch02_kv_cache): context_tokens, recompute_ms, cached_ms (per step)
load "style.gp"
data = datadir."/ch02_decode_times.csv"
set logscale xy 2
set format y "%g"
set xlabel "context length T (tokens already generated)"
set ylabel "milliseconds per decode step"
set key top left Left reverse box lc rgb "#cccccc"
set grid xtics ytics lc rgb "#dddddd"
plot data using "context_tokens":"recompute_ms" with linespoints pt 7 ps 0.7 lw 2 lc rgb c_plain title "recompute keys and values", \
     data using "context_tokens":"cached_ms" with linespoints pt 7 ps 0.7 lw 2 lc rgb c_mla title "KV cache"

# Caption: Chapter 2: time of one decode step against the context length, recomputing every key and value vs reading them from the KV cache (log-log; median of several runs)
# Data: ch02_decode_times.csv (ch02_kv_cache): context T, recompute ms/step, cached ms/step
load "style.gp"
data = datadir."/ch02_decode_times.csv"
set logscale xy 2
set format y "%g"
set xlabel "context length T (tokens already generated)"
set ylabel "milliseconds per decode step"
set key top left Left reverse box lc rgb "#cccccc"
set grid xtics ytics lc rgb "#dddddd"
plot data using "context T":"recompute ms/step" with linespoints pt 7 ps 0.7 lw 2 lc rgb c_plain title "recompute keys and values", \
     data using "context T":"cached ms/step" with linespoints pt 7 ps 0.7 lw 2 lc rgb c_mla title "KV cache"

# Caption: Chapter 4: how small can the latent be? Relative error of the rank-r key/value projection (truncated SVD) and of the attention output it gives, against the rank r; the projection has a low-rank part of rank 48 plus a little full-rank noise, so the error falls off a cliff at r = 48
# Data: ch04_rank_sweep.csv (ch04_low_rank_latents): rank, reconstruction error, attention output error
load "style.gp"
data = datadir."/ch04_rank_sweep.csv"
set logscale x 2
set logscale y 10
set format y "10^{%L}"
set xlabel "latent rank r (numbers cached per token)"
set ylabel "relative error (Frobenius)"
set key bottom left box lc rgb "#cccccc"
set grid xtics ytics lc rgb "#dddddd"
plot data using "rank":"reconstruction error" with linespoints pt 7 ps 0.7 lw 2 lc rgb c_plain title "key/value projection", \
     data using "rank":"attention output error" with linespoints pt 5 ps 0.7 lw 2 lc rgb c_mla title "attention output"

# Caption: Chapter 6: why RoPE needs its own key. Largest error of the absorbed attention score against the true one, by distance between query and key: rotating the latent key breaks absorption at every distance but 0, the decoupled rope key keeps it exact (rounding only)
# Data: ch06_rope_absorption.csv (ch06_decoupled_rope): distance, max_abs_error_rope_on_latent_key, max_abs_error_decoupled
load "style.gp"
data = datadir."/ch06_rope_absorption.csv"
set logscale y 10
set format y "10^{%L}"
set xlabel "distance t − s between the query and the key (positions)"
set ylabel "max |absorbed score − true score|"
set key center right box lc rgb "#cccccc"
set grid xtics ytics lc rgb "#dddddd"
set yrange [1e-8:100]
set autoscale xfix
plot data using "distance":"max_abs_error_rope_on_latent_key" with linespoints pt 7 ps 0.7 lw 2 lc rgb c_extra title "RoPE on the latent key", \
     data using "distance":"max_abs_error_decoupled" with linespoints pt 7 ps 0.7 lw 2 lc rgb c_mla title "decoupled rope key"

# Caption: Chapter 5: time of one decode step against the context length (solid: the whole step with its projections; dashed: attention alone): rebuilding every head's keys and values from the latent cache (chapter 4) vs the absorbed step that reads the latents directly (DeepSeek-V2-Lite's shape: 16 heads of 128, latent 512)
# Data: ch05_decode_step.csv (ch05_absorption): context T, rebuild ms, absorbed ms (the whole step), rebuild attn ms, absorbed attn ms (attention alone)
load "style.gp"
data = datadir."/ch05_decode_step.csv"
set logscale xy 2
set format y "%g"
set xlabel "context length T"
set ylabel "milliseconds per decode step"
set key top left Left reverse box lc rgb "#cccccc"
set grid xtics ytics lc rgb "#dddddd"
plot data using "context T":"rebuild ms" with linespoints pt 7 ps 0.7 lw 2 lc rgb c_plain title "rebuild K and V (chapter 4): whole step", \
     data using "context T":"absorbed ms" with linespoints pt 7 ps 0.7 lw 2 lc rgb c_mla title "absorbed: whole step", \
     data using "context T":"rebuild attn ms" with linespoints pt 6 ps 0.7 lw 1.5 dt 2 lc rgb c_plain title "rebuild: attention alone", \
     data using "context T":"absorbed attn ms" with linespoints pt 6 ps 0.7 lw 1.5 dt 2 lc rgb c_mla title "absorbed: attention alone"

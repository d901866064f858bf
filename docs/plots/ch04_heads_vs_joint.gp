# Caption: Chapter 4 on trained weights, one head against all heads: the energy the top r directions keep, against r as a share of the width — of each head's own W_K^h (16 rows; thin, the 8 heads of layer 3 of data/models/mha) and of all heads' W_K together (128 rows; thick), trained (colour) and at initialization (grey). Trained, one head keeps 90 % of its energy in about half of its 16 directions, all heads together in a quarter of their 128; at initialization 0.85 and 0.5 of the width (a thin random matrix has nearly equal singular values, a square one a spread spectrum): compare each curve with its own grey one
# Data: ch04_head_spectrum.csv (r = 1..16, "energy K head <h> <trained|init> L<l>") and ch04_kv_spectrum.csv (i = 1..128, "energy K <trained|init> L<l>"), both from ch04_low_rank_latents part 5
load "style.gp"
heads = datadir."/ch04_head_spectrum.csv"
joint = datadir."/ch04_kv_spectrum.csv"
L = 3
set xrange [0:1]
set yrange [0:1.02]
set xtics 0.125
set ytics 0.1
set format x "%.3f"
set grid xtics ytics lc rgb "#dddddd"
set xlabel "r / width   (width: 16 for one head, 128 for all heads)"
set ylabel "energy kept by the top r"
set title sprintf("layer %d: W_K of one head against W_K of all 8 heads", L) font ",13" noenhanced
set key bottom right box lc rgb "#cccccc" noenhanced
plot for [h = 0:7] heads using ($1 / 16):(column(sprintf("energy K head %d init L%d", h, L))) \
         with lines lw 1 lc rgb "#bbbbbb" title (h == 0 ? "one head, initialization (8 heads)" : ""), \
     joint using ($1 / 128):(column(sprintf("energy K init L%d", L))) with lines lw 3 \
         lc rgb "#777777" title "all heads, initialization", \
     for [h = 0:7] heads using ($1 / 16):(column(sprintf("energy K head %d trained L%d", h, L))) \
         with linespoints pt 7 ps 0.4 lw 1 lc rgb "#6baed6" title (h == 0 ? "one head, trained (8 heads)" : ""), \
     joint using ($1 / 128):(column(sprintf("energy K trained L%d", L))) with lines lw 3 \
         lc rgb "#08306b" title "all heads, trained"

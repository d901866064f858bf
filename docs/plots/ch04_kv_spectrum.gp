# Caption: Chapter 4 on trained weights: the singular values of [W_K; W_V] (256x128) of each layer of the trained MHA model in data/models/mha (colours), against the same matrices at initialization (grey: train.py's seeded GPT-2 draws, N(0, 0.02²)); left, s_i / s_1; right, the energy the top r keep. Training concentrates the energy: 90 % needs 47-64 directions instead of 85
# Data: ch04_kv_spectrum.csv (ch04_low_rank_latents, part 5): i, then per layer L "s trained L", "energy trained L", "s init L", "energy init L"
load "style.gp"
data = datadir."/ch04_kv_spectrum.csv"
set terminal svg size 1100,460 dynamic enhanced font "DejaVu Sans,12" background rgb "white"
set output outfile
layer_color(l) = l == 0 ? 0x9ecae1 : l == 1 ? 0x6baed6 : l == 2 ? 0x2171b5 : 0x08306b
set grid xtics ytics lc rgb "#dddddd"
set xrange [0:129]
set xtics 16
set multiplot layout 1,2
set title "singular values of [W_K; W_V]: s_i / s_1" font ",13" noenhanced
set xlabel "i"
set logscale y 10
set yrange [0.01:1.1]
set key top right box lc rgb "#cccccc"
plot for [l = 0:3] data using "i":(column(sprintf("s init L%d", l))) with lines lw 1.5 \
         lc rgb "#999999" title (l == 0 ? "initialization (every layer)" : "") noenhanced, \
     for [l = 0:3] data using "i":(column(sprintf("s trained L%d", l))) with lines lw 2 \
         lc rgb layer_color(l) title sprintf("trained, layer %d", l)
unset logscale y
set title "energy the top r keep: (s_1² + … + s_r²) / Σ s_i²" font ",13" noenhanced
set xlabel "latent rank r"
set yrange [0:1.02]
set ytics 0.1
set key bottom right box lc rgb "#cccccc"
set arrow 1 from 64, 0 to 64, 1.02 nohead dt 3 lc rgb "#55a868" lw 1.5
set label 1 "r = 64, the MLA twin's kv\\_lora\\_rank" at 66, 0.5 tc rgb "#55a868" font ",10"
set arrow 2 from 0, 0.9 to 129, 0.9 nohead dt 3 lc rgb "#c44e52" lw 1
set label 2 "90 %" at 2, 0.93 tc rgb "#c44e52" font ",10"
plot for [l = 0:3] data using "i":(column(sprintf("energy init L%d", l))) with lines lw 1.5 \
         lc rgb "#999999" title (l == 0 ? "initialization (every layer)" : "") noenhanced, \
     for [l = 0:3] data using "i":(column(sprintf("energy trained L%d", l))) with lines lw 2 \
         lc rgb layer_color(l) title sprintf("trained, layer %d", l)
unset multiplot

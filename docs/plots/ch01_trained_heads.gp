# Caption: Chapter 1 on a trained model: the attention weights of four heads of the trained MHA model (data/models/mha) on Genesis 1:1, one byte per token, computed by chapter 8 (ch08_serving --attention-map); row = the byte attending, column = the byte attended to. Each head has learned something else: the byte before, the latest space, the start of the current word, or a broad average (weights below 0.01 left white)
# Data: ch08_attention_L<layer>_h<head>.csv (ch08_serving --model data/models/mha --prompt "In the beginning God created the heaven and the earth." --attention-map): one (T, T) matrix per head, the bytes as row and column headers (␣ = space)
load "style.gp"
set terminal svg size 1200,1240 dynamic enhanced font "DejaVu Sans,12" background rgb "white"
set output outfile
set datafile nocolumnheaders  # each matrix has its own headers (matrix rowheaders columnheaders)
unset grid
set border 0
set tics scale 0
set xtics font ",7" noenhanced
set ytics font ",7" noenhanced
set yrange [*:*] reverse
set cbrange [0:1]
set palette defined (0 "#ffffff", 0.25 "#c6dbef", 0.5 "#6baed6", 0.75 "#2171b5", 1 "#08306b")
set size ratio -1
# The four heads: layer, head, title (the heads are described in chapters/01_attention/README.md).
layers = "2 2 3 0"
heads = "2 3 2 4"
title1 = "layer 2, head 2: the byte before"
title2 = "layer 2, head 3: the latest space"
title3 = "layer 3, head 2: the current word's start"
title4 = "layer 0, head 4: a broad average"
set multiplot layout 2,2 margins 0.06, 0.92, 0.05, 0.95 spacing 0.07, 0.08
do for [i = 1:4] {
  data = sprintf("%s/ch08_attention_L%s_h%s.csv", datadir, word(layers, i), word(heads, i))
  set title value(sprintf("title%d", i)) font ",13"
  if (i == 4) { set colorbox; set cblabel "attention weight" } else { unset colorbox }
  # Weights below 0.01 stay white: each drawn cell is an SVG element (a smooth embedded image
  # would blur the 54 x 54 cells).
  plot data matrix rowheaders columnheaders using 1:2:($3 >= 0.01 ? $3 : NaN) with image pixels
}
unset multiplot

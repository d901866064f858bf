# Caption: Chapter 3: the attention weights of two hand-made heads on chapter 1's sentence, side by side; the noun head sends every word after "flag" to "flag" and "flag" to "American", the list head sends "flag" to "The" and the commas and "and" to the colours
# Data: ch03_head0_weights.csv, ch03_head1_weights.csv (ch03_multi_head): one (T, T) matrix per head, the tokens as row and column headers
load "style.gp"
set terminal svg size 1100,560 dynamic enhanced font "DejaVu Sans,12" background rgb "white"
set output outfile
set datafile nocolumnheaders  # each matrix has its own headers (matrix rowheaders columnheaders)
unset grid
set border 0
set tics scale 0
set xtics rotate by 45 right
set yrange [*:*] reverse
set cbrange [0:1]
set palette defined (0 "#ffffff", 0.25 "#c6dbef", 0.5 "#6baed6", 0.75 "#2171b5", 1 "#08306b")
set size ratio -1
label(w, lo, hi) = (w >= lo && w < hi) ? sprintf("%.2f", w) : ""
title0 = "head 0, the noun head: which thing is this about?"
title1 = "head 1, the list head: what came before me in the phrase?"
# Fixed margins, so both panels get the same size whether or not they carry the colour box.
set tmargin at screen 0.90
set bmargin at screen 0.20
set multiplot
do for [h = 0:1] {
  data = sprintf("%s/ch03_head%d_weights.csv", datadir, h)
  set title value(sprintf("title%d", h)) font ",13"
  set xlabel "key: the token attended to"
  if (h == 0) {
    set lmargin at screen 0.11; set rmargin at screen 0.445
    set ylabel "query: the token attending" offset 1.5,0; unset colorbox
  } else {
    set lmargin at screen 0.555; set rmargin at screen 0.895
    unset ylabel; set colorbox; set cblabel "attention weight"
  }
  plot data matrix rowheaders columnheaders with image pixels, \
       data matrix rowheaders columnheaders using 1:2:(label($3, 0.05, 0.5)) with labels font ",9" tc rgb "#222222", \
       data matrix rowheaders columnheaders using 1:2:(label($3, 0.5, 2.0)) with labels font ",9" tc rgb "#ffffff"
}
unset multiplot

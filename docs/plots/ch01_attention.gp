# Caption: Chapter 1: the attention weights of the sentence; row i is what token i attends to, and the causal mask leaves everything right of the diagonal at 0
# Data: ch01_attention_weights.csv (ch01_attention): a (T, T) matrix with the tokens as row and column headers
load "style.gp"
data = datadir."/ch01_attention_weights.csv"
set terminal svg size 640,580 dynamic enhanced font "DejaVu Sans,12" background rgb "white"
set output outfile
set datafile nocolumnheaders  # the matrix has its own headers (matrix rowheaders columnheaders)
unset grid
set border 0
set tics scale 0
set xtics rotate by 45 right
set xlabel "key: the token attended to"
set ylabel "query: the token attending"
set yrange [*:*] reverse
set cbrange [0:1]
set cblabel "attention weight"
set palette defined (0 "#ffffff", 0.25 "#c6dbef", 0.5 "#6baed6", 0.75 "#2171b5", 1 "#08306b")
set size ratio -1
label(w, lo, hi) = (w >= lo && w < hi) ? sprintf("%.2f", w) : ""
plot data matrix rowheaders columnheaders with image pixels, \
     data matrix rowheaders columnheaders using 1:2:(label($3, 0.05, 0.5)) with labels font ",9" tc rgb "#222222", \
     data matrix rowheaders columnheaders using 1:2:(label($3, 0.5, 2.0)) with labels font ",9" tc rgb "#ffffff"

#!/usr/bin/env perl
# Doxygen input filter for the project's Markdown pages and headers (FILTER_PATTERNS in
# docs/Doxyfile.in). Doxygen reads what it prints instead of the file; the files stay as they are.
#
#   perl docs/doxygen_filter.pl --root <source dir> --figures <dir of built figures> <file>
#
# The chapter READMEs are written to read well on GitHub; this filter makes the same text a good
# Doxygen page, on the fly, without touching the files:
#   - the first "# " heading gets a stable label: chapters/NN_x/README.md -> {#chapterNN},
#     any other page -> {#page_<path>}; docs/mainpage.md is the main page;
#   - relative links become Doxygen references: ../05_absorption/README.md -> @ref chapter05,
#     latent.hpp -> the file's documentation; a link to a chapter not written yet becomes plain
#     text; a link to a file that does not exist becomes an unresolvable @ref, so Doxygen warns
#     and the docs build fails (a broken link is a bug);
#   - GitHub math becomes Doxygen math: $x$ and $`x`$ -> \f$x\f$, $$x$$ and ```math -> \f[x\f];
#   - on the main page, the first link to each chapter is a \subpage (the site's table of contents);
#   - images: ![alt](../../docs/figures/x.svg) -> ![alt](x.svg), found by name in IMAGE_PATH
#     (the docs target stages the committed figures and this build's into one folder);
#   - each chapter page gets, before its "## Exercises": the dataflow diagram
#     (docs/figures/chNN_dataflow.dot) and the figures the plots target drew for it
#     (docs/plots/chNN_*.gp -> <figures>/chNN_*.svg, only those that exist), unless the README
#     already shows them inline (docs/figures/<name>.svg), and links to the chapter's API group
#     and source files;
#   - docs/glossary.md is a page too; the main page's first link to it is a \subpage;
#   - a link to a heading of the same page ([text](#github-slug)) becomes a reference to a label
#     that heading gets ({#<page label>_<slug>}).
# Line numbers stay those of the file up to the inserted block, so Doxygen's warnings point at the
# right line.
#
# Given a header (*.hpp) instead, it prints it unchanged and, if the header defines a chapter's
# group (@defgroup chNN), appends a comment that links the group's page to the chapter's page.
use strict;
use warnings;
use File::Basename qw(dirname basename);
use File::Spec;
use Getopt::Long;

my ($root, $figures) = ('', '');
my $usage = "usage: $0 --root DIR --figures DIR FILE\n";
GetOptions('root=s' => \$root, 'figures=s' => \$figures) or die $usage;
my $file = shift @ARGV or die $usage;
$root = File::Spec->rel2abs($root);
$file = File::Spec->rel2abs($file);

# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------

# Lexically normalize an absolute path ("a/b/../c" -> "a/c"); the file need not exist.
sub normalize {
    my ($path) = @_;
    my @out;
    for my $part (split m{/+}, $path) {
        next if $part eq '' || $part eq '.';
        if ($part eq '..') { pop @out; next; }
        push @out, $part;
    }
    return '/' . join('/', @out);
}

# Path relative to the source root, or undef if it lies outside.
sub rel_to_root {
    my ($abs) = @_;
    return '' if $abs eq $root;
    return substr($abs, length($root) + 1) if index($abs, "$root/") == 0;
    return undef;
}

my $rel_file = rel_to_root(normalize($file)) // basename($file);
my $dir = dirname(normalize($file));

# The label of a Markdown page, from its path relative to the root.
sub page_label {
    my ($rel) = @_;
    return 'index' if $rel eq 'docs/mainpage.md';
    return "chapter$1" if $rel =~ m{^chapters/(\d\d)_[^/]+/README\.md$};
    (my $label = $rel) =~ s/\.md$//;
    $label =~ s/[^A-Za-z0-9]+/_/g;
    return "page_$label";
}

my $label = page_label($rel_file);
my ($chapter) = $rel_file =~ m{^chapters/(\d\d)_[^/]+/README\.md$};
my $is_main = $rel_file eq 'docs/mainpage.md';
my $chapter_dir = $chapter ? dirname($rel_file) : undef;

# ---------------------------------------------------------------------------------------------
# Links
# ---------------------------------------------------------------------------------------------

# True for a file or folder of the repository that Doxygen reads (docs/Doxyfile.in: INPUT,
# EXCLUDE_PATTERNS).
sub doxygen_reads {
    my ($rel) = @_;
    return 1 if $rel eq 'docs/glossary.md';
    return $rel =~ m{^(chapters|common)/} && $rel !~ m{/exercises?(/|$)};
}

# How \ref names a source file: by its path below chapters/ ("01_attention/main.cpp": every
# chapter has a main.cpp, and Doxygen tells them apart by that path) or from the root (common/).
sub file_ref {
    my ($rel) = @_;
    (my $ref = $rel) =~ s{^chapters/}{};
    return $ref;
}
my %subpaged;  # chapter labels already made a \subpage of the main page
my %heading_label;  # GitHub heading slug -> Doxygen label, for headings this page links to

# The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens.
sub github_slug {
    my ($title) = @_;
    utf8::decode($title);  # the file's bytes are UTF-8: "—" is punctuation, not three letters
    my $slug = lc $title;
    $slug =~ s/[^\p{L}\p{N}_\- ]//g;
    $slug =~ s/ /-/g;
    return $slug;
}

# Rewrite one Markdown link [text](target) (or image ![alt](target)) into what Doxygen resolves.
sub rewrite_link {
    my ($bang, $text, $target, $title) = @_;
    my $original = "$bang\[$text\]($target$title)";
    # Doxygen shows a reference's text as it is: `latent.hpp` would keep its backticks.
    my $plain = $text;
    $plain =~ s/`+([^`]*)`+/$1/g;
    # An anchor in this page that names one of its headings (GitHub's slug): a reference to the
    # label that heading gets (see %heading_label).
    return "[$plain](\@ref $heading_label{$1})" if $target =~ m{^#([\w-]+)$} && $heading_label{$1};
    # Absolute URLs, other anchors and Doxygen references stay as they are.
    return $original if $target =~ m{^([A-Za-z][A-Za-z0-9+.-]*:|#|@|\\)};
    (my $path = $target) =~ s/#.*$//;
    return $original if $path eq '';
    my $abs = normalize($path =~ m{^/} ? "$root$path" : "$dir/$path");
    my $rel = rel_to_root($abs);
    return $text unless defined $rel;

    if ($bang) {
        # Images: Doxygen finds them by name in IMAGE_PATH (the staged docs/figures + built ones).
        return "![$text](" . basename($rel) . "$title)" if -f $abs;
        return "![$text](broken-image:$rel)";
    }
    # A chapter, by its README or its folder.
    if ($rel =~ m{^chapters/(\d\d)_[^/]+(?:/README\.md)?/?$}) {
        my $num = $1;
        my ($folder) = $rel =~ m{^(chapters/\d\d_[^/]+)};
        return $text unless -f "$root/$folder/README.md";  # not written yet: plain text
        my $to = "chapter$num";
        if ($is_main && !$subpaged{$to}++) {
            return "\\subpage $to \"$plain\"";
        }
        return "[$plain](\@ref $to)";
    }
    # The project's README and the main page are the same place on the site.
    return "[$plain](\@ref index)" if $rel eq 'README.md' || $rel eq 'docs/mainpage.md';
    # Another Markdown page that Doxygen reads.
    if ($rel =~ m{\.md$} && -f $abs && doxygen_reads($rel)) {
        my $to = page_label($rel);
        return "\\subpage $to \"$plain\"" if $is_main && $rel =~ m{^docs/} && !$subpaged{$to}++;
        return "[$plain](\@ref $to)";
    }
    # A folder with a README.
    if (-d $abs && -f "$abs/README.md" && doxygen_reads($rel)) {
        return "[$plain](\@ref " . page_label("$rel/README.md") . ")";
    }
    # Source files Doxygen reads: their documentation page (or their source, if undocumented).
    if ($rel =~ m{\.(hpp|cpp)$} && doxygen_reads($rel)) {
        return "[$plain](\@ref " . file_ref($rel) . ")" if -f $abs;
        return "[$text](\@ref broken-link:$rel)";
    }
    # Anything else in the repository (configs, data, scripts, folders): the site does not carry
    # it, so keep the text (and say where it is); a missing one is a broken link.
    return "[$text](\@ref broken-link:$rel)" unless -e $abs;
    return $text =~ /\Q$rel\E|`/ ? $text : "$text (`$rel`)";
}

# ---------------------------------------------------------------------------------------------
# Math and links in one line of prose (outside code blocks)
# ---------------------------------------------------------------------------------------------
sub rewrite_prose {
    my ($line) = @_;
    # GitHub's $`...`$ math, before code spans are set aside.
    $line =~ s/(?<![^\s(\[])\$`(.+?)`\$(?![\w\$])/\\f\$$1\\f\$/g;
    # Set code spans (`...`, ``...``) aside: nothing inside them changes. A link's text may hold
    # one ([`latent.hpp`](latent.hpp)), so they come back only after the links are rewritten.
    my @spans;
    $line =~ s/((?<!\\)(`+)(?!`).*?(?<!`)\2(?!`))/push(@spans, $1); "\x{0}" . $#spans . "\x{0}"/ge;
    # Display math on one line: $$x$$ -> \f[x\f]
    $line =~ s/\$\$(.+?)\$\$/\\f[$1\\f]/g;
    # Inline math: $x$ (no space just inside the dollars, not part of a word or of \f$).
    $line =~ s/(?<![\\\$\w])\$(?=[^\s\$])([^\$]+?)(?<=[^\s\\])\$(?![\$\w])/\\f\$$1\\f\$/g;
    # Doxygen does not make **bold** out of a span holding a formula or a code span: say it in
    # HTML.
    $line =~ s{\*\*((?:(?!\*\*).)*?(?:\\f\$|\x{0})(?:(?!\*\*).)*?)\*\*}{<b>$1</b>}g;
    # Links and images: [text](target "title")
    $line =~ s{(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*([^()\s]+)(\s+"[^"]*")?\s*\)}
              {rewrite_link($1, $2, $3, $4 // '')}ge;
    $line =~ s/\x{0}(\d+)\x{0}/$spans[$1]/g;
    return $line;
}

# ---------------------------------------------------------------------------------------------
# What a chapter page gets added: dataflow, figures, code
# ---------------------------------------------------------------------------------------------

# First "<prefix> Caption: ..." comment of a file, or undef.
sub caption_of {
    my ($path) = @_;
    open(my $fh, '<', $path) or return undef;
    while (my $l = <$fh>) {
        return $1 if $l =~ m{^\s*(?:#|//)\s*Caption:\s*(.*?)\s*$};
    }
    return undef;
}

# Files under a folder (recursively), relative to the root, sorted; skips exercise stubs.
sub files_under {
    my ($rel, $pattern) = @_;
    my @found;
    opendir(my $dh, "$root/$rel") or return ();
    for my $entry (sort readdir $dh) {
        next if $entry =~ /^\./;
        my $sub = "$rel/$entry";
        if (-d "$root/$sub") {
            push @found, files_under($sub, $pattern) unless $entry =~ /^exercises?$/;
        } elsif ($entry =~ $pattern) {
            push @found, $sub;
        }
    }
    closedir $dh;
    return @found;
}

sub chapter_additions {
    my ($nn, $page_text) = @_;
    my @out;
    my $ch = "ch$nn";

    # A README that shows a picture inline (![...](../../docs/figures/<name>.svg)) does not get
    # it a second time here.
    my $inline = sub { my ($name) = @_; return $page_text =~ m{docs/figures/\Q$name\E\.svg}; };

    my $dot = "$root/docs/figures/${ch}_dataflow.dot";
    if (-f $dot && !$inline->("${ch}_dataflow")) {
        my $caption = caption_of($dot) // "Chapter " . ($nn + 0) . ": the data and its shapes";
        $caption =~ s/"/\\"/g;
        push @out, "## Dataflow {#chapter${nn}_dataflow}", '',
            "\\dotfile ${ch}_dataflow.dot \"$caption\"", '';
    }

    my @plots = grep { m{/${ch}_[^/]*\.gp$} && !$inline->(basename($_, '.gp')) }
        files_under('docs/plots', qr/\.gp$/);
    if (@plots) {
        push @out, "## Figures {#chapter${nn}_figures}", '';
        my $drawn = 0;
        for my $gp (@plots) {
            my $name = basename($gp, '.gp');
            next unless $figures ne '' && -f "$figures/$name.svg";
            my $caption = caption_of("$root/$gp") // $name;
            $caption =~ s/"/\\"/g;
            push @out, "\\image html $name.svg \"$caption\"", '';
            ++$drawn;
        }
        push @out, 'The data behind these figures comes from running the chapter program; '
            . '`cmake --build build --target plots` draws them again (with gnuplot) from fresh '
            . 'runs.', ''
            if $drawn;
        push @out, '*No figures here: they are drawn by `cmake --build build --target plots`, '
            . 'which needs gnuplot (Debian: `gnuplot-nox`) and the chapter program.*', ''
            unless $drawn;
    }

    my @headers = files_under($chapter_dir, qr/\.hpp$/);
    my @sources = files_under($chapter_dir, qr/\.cpp$/);
    my $has_group = 0;
    for my $h (@headers) {
        open(my $fh, '<', "$root/$h") or next;
        local $/;
        my $text = <$fh>;
        $has_group = 1 if $text =~ /[\\@]defgroup\s+$ch\b/;
    }
    if (@headers || @sources || $has_group) {
        push @out, "## API reference and source files {#chapter${nn}_code}", '';
        push @out, "- API reference of this chapter: \@ref $ch" if $has_group;
        my $link = sub {
            '[' . substr($_[0], length($chapter_dir) + 1) . '](@ref ' . file_ref($_[0]) . ')';
        };
        my $list = sub { join(', ', map { $link->($_) } @_) };
        push @out, '- Headers: ' . $list->(@headers) if @headers;
        push @out, '- Sources: ' . $list->(@sources) if @sources;
        push @out, '';
    }
    return @out;
}

# ---------------------------------------------------------------------------------------------
# A header that defines a chapter's group: its API page links back to the chapter's page
# ---------------------------------------------------------------------------------------------
open(my $in, '<', $file) or die "doxygen_filter: cannot read $file: $!\n";
my @lines = <$in>;
close $in;

if ($file !~ /\.md$/) {
    # Unchanged, plus a comment at the end (so line numbers stay): the group's documentation
    # gets a link to the lesson, when the chapter's README exists.
    print @lines;
    my $text = join('', @lines);
    while ($text =~ /[\\@]defgroup\s+ch(\d\d)\b/g) {
        my $nn = $1;
        my ($folder) = grep { -d $_ } glob("$root/chapters/${nn}_*");
        next unless $folder && -f "$folder/README.md";
        print "\n/// \@addtogroup ch$nn\n/// The lesson of this chapter: \@ref chapter$nn.\n";
    }
    exit 0;
}
chomp @lines;

# Headings that a link of this page points at ([text](#slug)) get a label, so the link works on
# the site as it does on GitHub.
{
    my %wanted;
    my $in_code = 0;
    for my $l (@lines) {
        if ($l =~ /^\s*(`{3,}|~{3,})/) { $in_code = !$in_code; next; }
        next if $in_code;
        $wanted{$1} = 1 while $l =~ /\]\(#([\w-]+)\)/g;
    }
    $in_code = 0;
    for my $l (@lines) {
        if ($l =~ /^\s*(`{3,}|~{3,})/) { $in_code = !$in_code; next; }
        next if $in_code || $l !~ /^#{2,6}\s+(.*?)\s*$/;
        my $slug = github_slug($1);
        next unless $wanted{$slug} && !$heading_label{$slug};
        (my $id = $slug) =~ s/-/_/g;
        $heading_label{$slug} = "${label}_$id";
    }
}

# True if a paragraph's text leaves an inline formula open: a "$" that starts one ($x...) with
# no "$" closing it yet (GitHub lets inline math run over a line break).
sub opens_math {
    my ($text) = @_;
    $text =~ s/(?<!\\)(`+)(?!`).*?(?<!`)\1(?!`)//g;  # code spans
    $text =~ s/\\f\$|\\\$//g;                         # Doxygen math, escaped dollars
    $text =~ s/\$\$.*?\$\$//g;                         # display math on one line
    $text =~ s/(?<![\\\$\w])\$(?=[^\s\$])[^\$]+?(?<=[^\s\\])\$(?![\$\w])//g;  # closed formulas
    return $text =~ /(?<![\\\$\w])\$(?=[^\s\$])/;
}

my @out;
my $fence = '';         # the fence that opened the current code block ('' outside one)
my $math_fence = 0;     # inside a ```math block
my $display = 0;        # inside a $$ ... $$ block
my $titled = 0;         # the first heading got its label
my $added = !$chapter;  # the chapter additions are in
my @additions = $chapter ? chapter_additions($chapter, join("\n", @lines)) : ();
my @pending;            # prose lines held back while an inline formula is open (at most 4)

# Rewrite the held-back lines as one piece of text; they stay as many lines as they were.
sub flush {
    return unless @pending;
    push @out, split(/\n/, rewrite_prose(join("\n", @pending)), -1);
    @pending = ();
}

for my $line (@lines) {
    if ($fence ne '') {  # inside a fenced block: code stays as it is, math becomes \f[ \f]
        if ($line =~ /^\s*\Q$fence\E\s*$/) {
            push @out, $math_fence ? '\f]' : $line;
            ($fence, $math_fence) = ('', 0);
        } else {
            push @out, $line;
        }
        next;
    }
    if ($line =~ /^\s*(`{3,}|~{3,})\s*(\w*)/) {
        flush();
        ($fence, $math_fence) = ($1, $2 eq 'math');
        push @out, $math_fence ? '\f[' : $line;
        next;
    }
    if ($line =~ /^\s*\$\$\s*$/) {  # a display-math block: $$ on its own line
        flush();
        push @out, $display ? '\f]' : '\f[';
        $display = !$display;
        next;
    }
    if ($display) {
        push @out, $line;
        next;
    }
    if (!$titled && $line =~ /^#\s+(.*?)\s*$/) {
        flush();
        my $title = $1;
        $titled = 1;
        if ($title !~ /\{#[\w-]+\}\s*$/) {
            $title = rewrite_prose($title);
            $line = "# $title {#" . ($is_main ? 'mainpage' : $label) . '}';
        }
        push @out, $line;
        next;
    }
    if (!$added && $line =~ /^##\s+Exercises\b/i) {
        flush();
        push @out, @additions;
        $added = 1;
    }
    if ($line =~ /^\s*$/ || $line =~ /^#/) {  # a paragraph ends: a formula cannot go on
        flush();
        if ($line =~ /^#{2,6}\s+(.*?)\s*$/ && $line !~ /\{#[\w-]+\}\s*$/) {
            my $slug = github_slug($1);
            $line .= " {#$heading_label{$slug}}" if $heading_label{$slug};
        }
        push @out, rewrite_prose($line);
        next;
    }
    push @pending, $line;
    flush() unless @pending < 4 && opens_math(join("\n", @pending));
}
flush();
push @out, '', @additions unless $added;
print "$_\n" for @out;

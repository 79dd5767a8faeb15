# A Perl process whose state is a hash that grows by one entry a tick. It
# checks the hash against the counter every tick and exits (the counter
# stops) if memory lost anything, then writes the counter atomically.
use strict;
use warnings;
use Time::HiRes qw(sleep);

my $path = shift @ARGV;
my %squares;
my $sum = 0;
for (my $i = 0; ; $i++) {
    $squares{$i} = $i * $i;
    $sum += $i * $i;
    my $n = scalar(keys %squares);
    my $want = $i * ($i + 1) * (2 * $i + 1) / 6;
    if ($n != $i + 1 || $sum != $want || $squares{int($i / 2)} != int($i / 2) ** 2) {
        die "state lost at $i: $n keys, sum $sum, want $want\n";
    }
    open(my $fh, '>', "$path.tmp") or die "open: $!";
    print $fh "$i\n";
    close($fh);
    rename("$path.tmp", $path) or die "rename: $!";
    sleep(0.05);
}
